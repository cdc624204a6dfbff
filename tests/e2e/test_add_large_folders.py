"""``pinfold add -r`` of folders big enough to be HAMT-sharded: the root CIDs equal
real Kubo v0.22's (tests/vectors/kubo_hamt.json), and the sharded folder reads back
through ``ls``, ``cat``, ``stat``, ``get`` and the gateway's listing. A real daemon,
the real CLI over the real socket."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support import hamt_folders
from tests.support.curl import curl, need_curl
from tests.support.daemon import DaemonProcess, cli_json, run_cli, running

VECTORS = Path(__file__).parents[1] / "vectors" / "kubo_hamt.json"
CASES = {c["name"]: c for c in json.loads(VECTORS.read_text())["cases"]}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running(tmp_path_factory.mktemp("hamt")) as d:
        yield d


@pytest.fixture(scope="module")
def add(daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory
        ) -> Callable[[str], tuple[str, Path]]:
    """``add(case name)`` -> (root CID of ``add -r --cid-version 0``, source folder);
    each case built and added once per module."""
    done: dict[str, tuple[str, Path]] = {}

    def run(name: str) -> tuple[str, Path]:
        if name not in done:
            src = tmp_path_factory.mktemp(name) / name
            src.mkdir()
            hamt_folders.build(src, CASES[name])
            res = cli_json(daemon.home, "add", "-r", "--cid-version", "0", str(src),
                           timeout=600)
            assert res["files"] == CASES[name]["files"]
            done[name] = (res["cid"], src)
        return done[name]
    return run


@pytest.mark.parametrize("name", ["one_byte_under_threshold", "exactly_at_threshold",
                                  "utf8_names_at_threshold"])
def test_add_r_cid_version_0_gives_kubo_cids_around_the_sharding_threshold(
        add: Callable[[str], tuple[str, Path]], name: str) -> None:
    cid, _ = add(name)
    assert cid == CASES[name]["root"]


def _ls(daemon: DaemonProcess, ref: str) -> list[dict]:
    out = run_cli(daemon.home, "--json", "ls", ref, timeout=300).stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def test_a_sharded_folder_lists_cats_stats_and_gets_back_every_file(
        daemon: DaemonProcess, add: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    cid, src = add("utf8_names_at_threshold")
    files = dict(hamt_folders.files(CASES["utf8_names_at_threshold"]))
    entries = _ls(daemon, cid)
    assert sorted(e["name"] for e in entries) == sorted(files)
    first = sorted(files)[0]
    assert run_cli(daemon.home, "cat", f"{cid}/{first}").stdout == files[first]
    st = cli_json(daemon.home, "stat", cid)
    assert st["type"] == "dir" and st["complete"]
    out = tmp_path / "out"
    run_cli(daemon.home, "get", cid, "-o", str(out), timeout=300)
    restored = {p.name: p.read_bytes() for p in out.iterdir()}
    assert restored == files
    missing = run_cli(daemon.home, "cat", f"{cid}/no-such-file", check=False)
    assert missing.returncode == 4 and b"no entry 'no-such-file'" in missing.stderr


def test_the_gateway_lists_a_sharded_folder_and_serves_its_files(
        daemon: DaemonProcess, add: Callable[[str], tuple[str, Path]]) -> None:
    need_curl()
    cid, _ = add("exactly_at_threshold")
    with daemon.client() as c:
        url = c.id()["gateway"]
    files = dict(hamt_folders.files(CASES["exactly_at_threshold"]))
    page = curl(f"{url}/ipfs/{cid}/", timeout=120)
    assert page.status == 200
    body = page.body.decode()
    assert all(f'href="{quote(name)}"' in body for name in files)
    name = sorted(files)[1234]
    r = curl(f"{url}/ipfs/{cid}/{quote(name)}")
    assert r.status == 200 and r.body == files[name]


@pytest.mark.slow
def test_add_r_of_25000_files_gives_kubos_cid_and_get_restores_them(
        daemon: DaemonProcess, add: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    case = CASES["nested_25000_files"]
    cid, _ = add(case["name"])
    assert cid == case["root"]
    assert len(_ls(daemon, f"{cid}/many")) == 25000
    out = tmp_path / "out"
    run_cli(daemon.home, "get", cid, "-o", str(out), timeout=600)
    for rel, data in hamt_folders.files(case):
        assert (out / rel).read_bytes() == data, rel


def test_get_writes_names_of_251_to_255_bytes(daemon: DaemonProcess, tmp_path: Path) -> None:
    """NAME.part would pass the 255-byte name limit; get still writes every file."""
    src = tmp_path / "long"
    src.mkdir()
    names = ["L" * 250 + ".txt", "\u00fc" * 125 + ".txt", "short.txt"]  # 254, 254, 9 bytes
    for i, name in enumerate(names):
        (src / name).write_bytes(b"%d" % i * 1000)
    cid = cli_json(daemon.home, "add", "-r", str(src))["cid"]
    out = tmp_path / "out"
    run_cli(daemon.home, "get", cid, "-o", str(out), timeout=120)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for i, name in enumerate(names):
        assert (out / name).read_bytes() == b"%d" % i * 1000
