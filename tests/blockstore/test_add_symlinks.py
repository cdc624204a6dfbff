"""Symbolic links under ``pinfold add -r``: stored as UnixFS symlinks (CIDs equal to
Kubo's), followed with ``-L``, and refused with a clear error when they dangle,
lead out of the folder, or loop. A real daemon, the real CLI over the real socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from pinfold.blockstore.unixfs import symlink_node

from tests.support.daemon import DaemonProcess, cli_json, run_cli

VECTORS = Path(__file__).parents[1] / "vectors" / "kubo_symlinks.json"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


# The tests share one daemon (``daemon``, tests/conftest.py); each adds its own folder.
pytestmark = pytest.mark.shared_daemon


def _build(root: Path, layout: dict[str, dict[str, str]]) -> None:
    for rel, what in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if "symlink" in what:
            os.symlink(what["symlink"], path)
        else:
            path.write_text(what["file"])


def _hf_cache(root: Path) -> Path:
    """A Hugging Face hub cache: snapshots/REV/ holds relative links into blobs/."""
    repo = root / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "aaa111").write_bytes(b'{"hidden_size": 8}')
    (repo / "blobs" / "bbb222").write_bytes(os.urandom(300_000))
    snap = repo / "snapshots" / "0123abcd"
    (snap / "onnx").mkdir(parents=True)
    os.symlink("../../blobs/aaa111", snap / "config.json")
    os.symlink("../../../blobs/bbb222", snap / "onnx" / "model.onnx")
    return snap


def _blocks(d: DaemonProcess) -> int:
    return cli_json(d.home, "repo", "stat")["blocks"]


def test_symlink_node_is_the_unixfs_spec_encoding() -> None:
    # PBNode{Data: UnixFS Data{Type: Symlink (4), Data: target}}, no links, built by hand.
    target = b"../../blobs/aaa111"
    ufs = b"\x08\x04" + b"\x12" + bytes([len(target)]) + target
    block = b"\x0a" + bytes([len(ufs)]) + ufs
    cid, got = symlink_node(target.decode(), cid_version=0)
    assert got == block
    assert str(cid) == _base58(b"\x12\x20" + hashlib.sha256(block).digest())


@pytest.mark.parametrize("case", json.loads(VECTORS.read_text())["cases"],
                         ids=lambda c: c["name"])
def test_add_r_stores_symlinks_with_kubo_cids_and_get_restores_them(
        daemon: DaemonProcess, tmp_path: Path, case: dict) -> None:
    src = tmp_path / case["name"]
    src.mkdir()
    _build(src, case["layout"])
    res = cli_json(daemon.home, "add", "-r", "--cid-version", "0", str(src))
    assert res["cid"] == case["root"]
    links = {k: v["symlink"] for k, v in case["layout"].items() if "symlink" in v}
    assert res["symlinks"] == len(links)
    out = tmp_path / "restored"
    run_cli(daemon.home, "get", res["cid"], "-o", str(out))
    for rel, target in links.items():
        assert (out / rel).is_symlink() and os.readlink(out / rel) == target, rel
    for rel, what in case["layout"].items():
        if "file" in what:
            assert (out / rel).read_text() == what["file"]


def test_add_r_refuses_hf_snapshot_links_out_of_the_tree_and_suggests_L(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    snap = _hf_cache(tmp_path)
    before = _blocks(daemon)
    out = run_cli(daemon.home, "add", "-r", str(snap), check=False)
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(snap / "config.json") in err and "../../blobs/aaa111" in err
    assert "points outside" in err and "-L" in err
    assert _blocks(daemon) == before


def test_add_r_L_stores_the_content_hf_snapshot_links_point_to(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    snap = _hf_cache(tmp_path)
    plain = tmp_path / "plain"
    shutil.copytree(snap, plain, symlinks=False)  # the same files, no links
    assert not any(p.is_symlink() for p in plain.rglob("*"))
    res = cli_json(daemon.home, "add", "-r", "-L", str(snap))
    assert res["cid"] == cli_json(daemon.home, "add", "-r", str(plain))["cid"]
    assert res["symlinks"] == 0 and res["files"] == 2
    out = tmp_path / "restored"
    run_cli(daemon.home, "get", res["cid"], "-o", str(out))
    for rel in ("config.json", "onnx/model.onnx"):
        assert not (out / rel).is_symlink()
        assert (out / rel).read_bytes() == (snap / rel).read_bytes()


@pytest.mark.parametrize("dereference", [False, True], ids=["links", "dereference"])
def test_add_r_refuses_dangling_links_naming_them(
        daemon: DaemonProcess, tmp_path: Path, dereference: bool) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    os.symlink("gone.txt", src / "broken")
    out = run_cli(daemon.home, "add", "-r", *(["-L"] if dereference else []), str(src),
                  check=False)
    err = out.stderr.decode()
    assert out.returncode == 1 and str(src / "broken") in err and "dangling" in err, err


def test_add_r_refuses_absolute_links_even_into_the_tree(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    os.symlink(src / "ok.txt", src / "abs")
    out = run_cli(daemon.home, "add", "-r", str(src), check=False)
    err = out.stderr.decode()
    assert out.returncode == 1 and str(src / "abs") in err and "absolute" in err, err
    assert "-L" in err
    res = cli_json(daemon.home, "add", "-r", "-L", str(src))
    assert res["files"] == 2


@pytest.mark.parametrize("dereference", [False, True], ids=["links", "dereference"])
def test_add_r_with_a_cycle_of_links_errors_instead_of_hanging(
        daemon: DaemonProcess, tmp_path: Path, dereference: bool) -> None:
    flag = ["-L"] if dereference else []
    # Two links pointing at each other: never resolves.
    loop = tmp_path / "loop"
    loop.mkdir()
    os.symlink("b", loop / "a")
    os.symlink("a", loop / "b")
    out = run_cli(daemon.home, "add", "-r", *flag, str(loop), check=False, timeout=30)
    assert out.returncode == 1 and b"cycle of links" in out.stderr, out.stderr
    # A folder link to an ancestor: a link without -L, a cycle with -L.
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f.txt").write_text("f")
    os.symlink("..", tree / "d" / "up")
    out = run_cli(daemon.home, "add", "-r", *flag, str(tree), check=False, timeout=30)
    if dereference:
        err = out.stderr.decode()
        assert out.returncode == 1 and str(tree / "d" / "up") in err and "a cycle" in err, err
    else:
        assert out.returncode == 0, out.stderr
        res = json.loads(run_cli(daemon.home, "--json", "add", "-r", str(tree)).stdout)
        assert res["symlinks"] == 1


def test_add_r_refuses_a_fifo_instead_of_blocking(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    os.mkfifo(src / "pipe")
    out = run_cli(daemon.home, "add", "-r", str(src), check=False, timeout=30)
    assert out.returncode == 1 and b"not a regular file" in out.stderr, out.stderr
