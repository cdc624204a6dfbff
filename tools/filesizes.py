"""Print the Python files longer than a threshold, longest first.

Usage: ``python tools/filesizes.py [--threshold LINES] [PATH ...]``

PATH defaults to the repository root (the parent of this file's folder); folders
are walked for ``*.py`` files, skipping hidden folders, ``node_modules`` and
``__pycache__``. Each file over the threshold (default 600 lines) is printed as
``LINES  PATH`` (PATH relative to the current directory when below it), followed
by a summary line. It reports and never fails: the exit status is 0 unless the
arguments are wrong (2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

DEFAULT_THRESHOLD = 600
SKIP_DIRS = {"node_modules", "__pycache__", "build", "dist"}


def python_files(root: Path) -> Iterator[Path]:
    """Yield the ``*.py`` files under ``root`` (or ``root`` itself if it is a file)."""
    if root.is_file():
        yield root
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and d not in SKIP_DIRS
                         and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(folder) / name


def count_lines(path: Path) -> int:
    """Number of lines in ``path`` (a last line without a newline counts)."""
    with path.open("rb") as f:
        return sum(1 for _ in f)


def shown(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="filesizes", description="List the Python files longer than a threshold.")
    parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD, metavar="LINES",
                        help=f"report files with more lines than this (default {DEFAULT_THRESHOLD})")
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="files or folders to scan (default: the repository root)")
    args = parser.parse_args(argv)
    if args.threshold < 0:
        parser.error(f"--threshold must be 0 or more, got {args.threshold}")
    roots = args.paths or [Path(__file__).resolve().parent.parent]
    for root in roots:
        if not root.exists():
            parser.error(f"no such file or folder: {root}")

    sizes = {path.resolve(): count_lines(path) for root in roots for path in python_files(root)}
    over = sorted(((n, shown(p)) for p, n in sizes.items() if n > args.threshold),
                  key=lambda item: (-item[0], item[1]))
    for lines, name in over:
        print(f"{lines:6d}  {name}")
    print(f"{len(over)} of {len(sizes)} Python files over {args.threshold} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
