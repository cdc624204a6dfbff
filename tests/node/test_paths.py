"""Paths inside CIDs with a real daemon: ``cat``, ``get``, ``pin add`` and ``dag
export`` of ``CID/path``, ``ls`` and ``stat``, their errors and exit codes, the
Python client's path methods, and a HAMT-sharded folder written by the real js
importer (tests/vectors/hamt_js.json), imported as a CAR."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pinfold.blockstore.car import car_header, car_section, read_car
from pinfold.blockstore.cid import parse_cid
from pinfold.client import RpcError
from tests.support.daemon import DaemonProcess, run_cli

VECTORS = Path(__file__).parent.parent / "vectors"
ZBIN = random.Random(15).randbytes(1 << 20)  # 16 distinct 64 KiB chunks


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("paths"), "a") as d:  # stopped, then SIGKILLed if still there
        yield d


@pytest.fixture(scope="module")
def tree(node: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A folder ``{a.txt, sub/{data.csv, deep/z.bin}}`` added to ``node``."""
    src = tmp_path_factory.mktemp("src") / "folder"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello a\n")
    (src / "sub" / "data.csv").write_bytes(b"x,y\n1,2\n3,4\n")
    (src / "sub" / "deep" / "z.bin").write_bytes(ZBIN)
    with node.client() as c:
        root = c.add(str(src), chunk_size=65536)
        cids = {rel: c.resolve(f"{root}/{rel}")
                for rel in ("a.txt", "sub", "sub/data.csv", "sub/deep", "sub/deep/z.bin")}
    return {"root": root, "src": src, "cids": cids}


def _err(proc: Any) -> dict[str, Any]:
    return json.loads(proc.stderr)["error"]


def test_cat_of_a_path_inside_a_folder(node: DaemonProcess, tree: dict[str, Any]) -> None:
    root = tree["root"]
    out = run_cli(node.home, "cat", f"{root}/sub/data.csv")
    assert out.stdout == b"x,y\n1,2\n3,4\n"
    for form in (f"/ipfs/{root}/a.txt", f"{root}//a.txt", f"{root}/a.txt/"):
        assert run_cli(node.home, "cat", form).stdout == b"hello a\n"
    ranged = run_cli(node.home, "cat", f"{root}/sub/deep/z.bin", "--offset", "70000",
                     "--length", "10")
    assert ranged.stdout == ZBIN[70000:70010]


def test_get_of_a_path_writes_the_subtree_under_its_name(
        node: DaemonProcess, tree: dict[str, Any], tmp_path: Path) -> None:
    root = tree["root"]
    run_cli(node.home, "get", f"{root}/sub", "-o", str(tmp_path / "out"))
    assert (tmp_path / "out" / "data.csv").read_bytes() == b"x,y\n1,2\n3,4\n"
    assert (tmp_path / "out" / "deep" / "z.bin").read_bytes() == \
        (tree["src"] / "sub" / "deep" / "z.bin").read_bytes()
    # Into an empty folder a single file lands under its own name, not "CID/sub/data.csv".
    (tmp_path / "into").mkdir()
    with node.client() as c:
        res = c.get(f"{root}/sub/data.csv", tmp_path / "into")
    assert Path(res["path"]) == tmp_path / "into" / "data.csv"
    assert (tmp_path / "into" / "data.csv").read_bytes() == b"x,y\n1,2\n3,4\n"


def test_pin_add_of_a_path_pins_the_resolved_cid_and_says_so(
        node: DaemonProcess, tree: dict[str, Any]) -> None:
    root, want = tree["root"], tree["cids"]["sub/deep"]
    out = run_cli(node.home, "pin", "add", f"{root}/sub/deep")
    text = out.stdout.decode()
    assert f"pinned {want}" in text and f"resolved from {root}/sub/deep" in text
    with node.client() as c:
        assert any(p["cid"] == want for p in c.pins())
        assert not any(p["cid"] == f"{root}/sub/deep" for p in c.pins())


def test_dag_export_of_a_path_exports_the_subdag(
        node: DaemonProcess, tree: dict[str, Any], tmp_path: Path) -> None:
    root, sub = tree["root"], tree["cids"]["sub"]
    car = tmp_path / "sub.car"
    run_cli(node.home, "dag", "export", f"{root}/sub", "-o", str(car))
    roots, blocks = read_car(car.read_bytes())
    assert [str(r) for r in roots] == [sub]
    assert str(blocks[0][0]) == sub and parse_cid(root) not in [c for c, _ in blocks]


def test_a_missing_entry_is_not_found_exit_4_naming_it(
        node: DaemonProcess, tree: dict[str, Any]) -> None:
    root = tree["root"]
    for cmd in (["cat"], ["get"], ["ls"], ["stat"], ["pin", "add"], ["dag", "export"]):
        proc = run_cli(node.home, "--json", *cmd, f"{root}/sub/nope.txt", check=False)
        err = _err(proc)
        assert proc.returncode == 4, (cmd, proc.stderr)
        assert err["code"] == "path_not_found"
        assert err["message"] == f"no entry 'nope.txt' in directory {root}/sub"
    through_file = run_cli(node.home, "cat", f"{root}/a.txt/x", check=False)
    assert through_file.returncode == 4 and b"not a directory" in through_file.stderr
    assert b"Traceback" not in through_file.stderr


def test_a_bad_cid_or_segment_is_refused_exit_1_naming_it(node: DaemonProcess,
                                                          tree: dict[str, Any]) -> None:
    bad = run_cli(node.home, "--json", "cat", "not-a-cid/a.txt", check=False)
    assert bad.returncode == 1 and _err(bad)["code"] == "invalid_cid"
    assert "'not-a-cid' is not a CID" in _err(bad)["message"]
    dots = run_cli(node.home, "--json", "ls", f"{tree['root']}/../a.txt", check=False)
    assert dots.returncode == 1 and _err(dots)["code"] == "invalid_path"
    assert "segment '..' is not allowed" in _err(dots)["message"]
    with node.client() as c, pytest.raises(RpcError) as info:
        c.stat("bafy-nope")
    assert info.value.code == "invalid_cid"


def test_ls_lists_name_type_size_cid(node: DaemonProcess, tree: dict[str, Any]) -> None:
    root, cids = tree["root"], tree["cids"]
    lines = run_cli(node.home, "ls", root).stdout.decode().splitlines()
    assert [ln.split() for ln in lines] == [[cids["a.txt"], "8", "file", "a.txt"],
                                           [cids["sub"], "-", "dir", "sub/"]]
    got = [json.loads(ln) for ln in
           run_cli(node.home, "--json", "ls", "-r", root).stdout.decode().splitlines()]
    assert [(e["path"], e["type"], e["size"], e["cid"]) for e in got] == [
        ("a.txt", "file", 8, cids["a.txt"]), ("sub", "dir", None, cids["sub"]),
        ("sub/data.csv", "file", 12, cids["sub/data.csv"]),
        ("sub/deep", "dir", None, cids["sub/deep"]),
        ("sub/deep/z.bin", "file", 1 << 20, cids["sub/deep/z.bin"])]
    single = run_cli(node.home, "--json", "ls", f"{root}/sub/data.csv").stdout.decode()
    assert json.loads(single)["name"] == "data.csv" and json.loads(single)["type"] == "file"


def test_stat_counts_blocks_and_what_is_local(node: DaemonProcess, tree: dict[str, Any]) -> None:
    root = tree["root"]
    st = json.loads(run_cli(node.home, "--json", "stat", f"{root}/sub/deep/z.bin").stdout)
    # 1 MiB in 64 KiB chunks: 16 raw leaves under one root.
    assert st["type"] == "file" and st["size"] == 1 << 20 and st["blocks"] == 17
    assert st["local_blocks"] == 17 and st["local_bytes"] > 1 << 20 and st["complete"]
    text = run_cli(node.home, "stat", root).stdout.decode()
    assert "type:   dir" in text and "(complete)" in text


def test_client_path_methods(node: DaemonProcess, tree: dict[str, Any]) -> None:
    root, cids = tree["root"], tree["cids"]
    with node.client() as c:
        assert c.resolve_path(f"{root}/sub/data.csv") == {
            "path": f"{root}/sub/data.csv", "cid": cids["sub/data.csv"], "type": "file",
            "size": 12}
        assert [e["name"] for e in c.ls(f"{root}/sub")] == ["data.csv", "deep"]
        assert c.stat(f"{root}/a.txt")["blocks"] == 1
        data, summary = c.read(f"{root}/sub/deep/z.bin", offset=65530, length=12)
        assert data == ZBIN[65530:65542]
        assert summary["blocks"] == 3  # the file's root and the two leaves the range spans
        with c.open(f"pinfold://{root}/sub/data.csv") as f:
            f.seek(4)
            assert f.read(3) == b"1,2"
        with pytest.raises(RpcError) as info:
            list(c.ls(f"{root}/missing"))
        assert info.value.code == "path_not_found"
        assert c.id()["peer_id"]  # the connection is usable after the error


def _hamt_car(tmp_path: Path) -> tuple[str, Path]:
    vec = json.loads((VECTORS / "hamt_js.json").read_text())
    body = bytearray(car_header([parse_cid(vec["root"])]))
    for cid, b64 in vec["blocks"].items():
        body += car_section(parse_cid(cid), base64.b64decode(b64))
    car = tmp_path / "hamt.car"
    car.write_bytes(body)
    return vec["root"], car


def test_hamt_sharded_folder_from_js_importer(node: DaemonProcess, tmp_path: Path) -> None:
    root, car = _hamt_car(tmp_path)
    run_cli(node.home, "dag", "import", str(car))
    for i in (0, 299, 599):
        assert run_cli(node.home, "cat", f"{root}/file-{i}.txt").stdout == f"hello {i}\n".encode()
    names = [json.loads(ln)["name"] for ln in
             run_cli(node.home, "--json", "ls", root).stdout.decode().splitlines()]
    assert sorted(names) == sorted(f"file-{i}.txt" for i in range(600))
    missing = run_cli(node.home, "cat", f"{root}/file-600.txt", check=False)
    assert missing.returncode == 4 and b"no entry 'file-600.txt'" in missing.stderr
    st = json.loads(run_cli(node.home, "--json", "stat", root).stdout)
    assert st["type"] == "dir" and st["blocks"] == 783 and st["complete"]
    run_cli(node.home, "get", root, "-o", str(tmp_path / "out"))
    assert len(list((tmp_path / "out").iterdir())) == 600
    assert (tmp_path / "out" / "file-42.txt").read_bytes() == b"hello 42\n"
