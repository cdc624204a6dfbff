"""tools/filesizes.py (``make sizes``): the file-size report, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "filesizes.py"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=60)


def write_lines(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"x{i} = {i}\n" for i in range(n)))


def test_sizes_lists_files_over_the_threshold_longest_first_and_exits_0(tmp_path: Path) -> None:
    write_lines(tmp_path / "pkg" / "big.py", 900)
    write_lines(tmp_path / "pkg" / "sub" / "bigger.py", 1200)
    write_lines(tmp_path / "pkg" / "at_bound.py", 600)
    write_lines(tmp_path / "pkg" / "small.py", 10)
    write_lines(tmp_path / ".venv" / "hidden.py", 5000)
    write_lines(tmp_path / "node_modules" / "dep.py", 5000)
    (tmp_path / "pkg" / "notes.txt").write_text("x\n" * 5000)

    out = run("pkg", ".venv", "node_modules", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "  5000  .venv/hidden.py",
        "  5000  node_modules/dep.py",
        "  1200  pkg/sub/bigger.py",
        "   900  pkg/big.py",
        "4 of 6 Python files over 600 lines",
    ]


def test_sizes_skips_hidden_and_dependency_folders_below_a_root(tmp_path: Path) -> None:
    write_lines(tmp_path / "pkg" / "big.py", 700)
    write_lines(tmp_path / ".venv" / "lib" / "huge.py", 5000)
    write_lines(tmp_path / "tests" / "node_modules" / "dep.py", 5000)

    out = run(".", "--threshold", "100", cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["   700  pkg/big.py", "1 of 1 Python files over 100 lines"]


def test_sizes_names_a_bad_threshold_or_a_missing_path(tmp_path: Path) -> None:
    bad = run("--threshold", "-5", cwd=tmp_path)
    assert bad.returncode == 2
    assert "--threshold must be 0 or more, got -5" in bad.stderr

    missing = run("no/such/dir", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no such file or folder: no/such/dir" in missing.stderr
