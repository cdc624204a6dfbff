"""The ``pinfold://`` fsspec filesystem against a real daemon: found through its
entry point, lazy seekable files that fetch only the ranges read, ``ls``,
``info``, ``exists``, ``cat_file`` ranges, ``get`` of a tree, ``put`` returning
the CID, the socket from the home or ``storage_options``, and pandas."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas
import pytest

from pinfold.fsspec import PinfoldFileSystem
from tests.support.daemon import DaemonProcess

CSV = b"name,size\nalpha,1\nbeta,22\ngamma,333\n"
BIG = random.Random(7).randbytes(3 * 1024 * 1024 + 123)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path_factory.mktemp("fsspec"), "a") as d:  # stopped, then SIGKILLed if still there
        yield d


@pytest.fixture(scope="module")
def folder(node: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    src = tmp_path_factory.mktemp("src") / "model"
    (src / "shards").mkdir(parents=True)
    (src / "data.csv").write_bytes(CSV)
    (src / "shards" / "big.bin").write_bytes(BIG)
    with node.client() as c:
        root = c.add(str(src), chunk_size=65536)
        return {"root": root, "src": src, "socket": str(c.socket_path)}


def _fs(folder: dict[str, Any], **kw: Any) -> PinfoldFileSystem:
    return fsspec.filesystem("pinfold", socket=folder["socket"], **kw)


def test_pinfold_protocol_is_registered_by_entry_point() -> None:
    assert fsspec.get_filesystem_class("pinfold") is PinfoldFileSystem


def test_open_is_seekable_and_fetches_only_the_ranges_read(folder: dict[str, Any]) -> None:
    path = f"pinfold://{folder['root']}/shards/big.bin"
    with fsspec.open(path, "rb", socket=folder["socket"], block_size=65536) as f:
        assert f.size == len(BIG)
        f.seek(2_000_000)
        assert f.read(100) == BIG[2_000_000:2_000_100]
        # One 64 KiB range: the file's root and at most two leaves, not 49 blocks.
        assert f.ranges == 1 and f.blocks_read <= 3
        f.seek(2_000_050)
        assert f.read(10) == BIG[2_000_050:2_000_060]
        assert f.ranges == 1  # served from the block cache
        f.seek(-5, 2)
        assert f.read() == BIG[-5:]
        assert f.tell() == len(BIG)


def test_ls_info_exists(folder: dict[str, Any]) -> None:
    fs, root = _fs(folder), folder["root"]
    listing = fs.ls(f"pinfold://{root}")
    assert [(e["name"], e["type"], e["size"]) for e in listing] == [
        (f"{root}/data.csv", "file", len(CSV)), (f"{root}/shards", "directory", 0)]
    assert fs.ls(root, detail=False) == [f"{root}/data.csv", f"{root}/shards"]
    info = fs.info(f"{root}/shards/big.bin")
    assert info["type"] == "file" and info["size"] == len(BIG) and info["cid"].startswith("baf")
    assert fs.exists(f"{root}/data.csv") and fs.isdir(f"{root}/shards")
    assert not fs.exists(f"{root}/nope.csv")
    with pytest.raises(FileNotFoundError, match="no entry 'nope.csv'"):
        fs.info(f"{root}/nope.csv")
    with pytest.raises(ValueError, match="is not a CID"):
        fs.info("not-a-cid/data.csv")
    assert fs.find(root) == [f"{root}/data.csv", f"{root}/shards/big.bin"]


def test_cat_file_with_ranges(folder: dict[str, Any]) -> None:
    fs, p = _fs(folder), f"{folder['root']}/shards/big.bin"
    assert fs.cat_file(p, start=1_000_000, end=1_000_016) == BIG[1_000_000:1_000_016]
    assert fs.cat_file(p, start=-10) == BIG[-10:]
    assert fs.cat_file(p, start=5, end=-3) == BIG[5:-3]
    assert fs.cat_file(f"{folder['root']}/data.csv") == CSV
    with pytest.raises(IsADirectoryError):
        fs.open(f"{folder['root']}/shards")
    with pytest.raises(ValueError, match="read-only"):
        fs.open(f"{folder['root']}/data.csv", "wb")


def test_get_downloads_a_tree_and_put_returns_the_cid(folder: dict[str, Any],
                                                     tmp_path: Path) -> None:
    fs, root = _fs(folder), folder["root"]
    fs.get(f"pinfold://{root}", str(tmp_path / "down"), recursive=True)
    assert (tmp_path / "down" / "data.csv").read_bytes() == CSV
    assert (tmp_path / "down" / "shards" / "big.bin").read_bytes() == BIG
    again = fs.put(str(folder["src"]), recursive=True, chunk_size=65536)
    assert again == root  # same content, same CID
    one = tmp_path / "one.txt"
    one.write_bytes(b"put me\n")
    cid = fs.put(str(one))
    assert fs.cat_file(cid) == b"put me\n"
    with pytest.raises(ValueError, match="no destination"):
        fs.put(str(one), "pinfold://somewhere/else.txt")


def test_default_socket_is_the_homes_as_the_cli_finds_it(
        node: DaemonProcess, folder: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINFOLD_HOME", str(node.home))
    with fsspec.open(f"pinfold://{folder['root']}/data.csv", "rb") as f:
        assert f.read() == CSV


def test_pandas_read_csv_through_pinfold_url(node: DaemonProcess, folder: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"pinfold://{folder['root']}/data.csv"
    df = pandas.read_csv(url, storage_options={"socket": folder["socket"]})
    assert list(df.columns) == ["name", "size"] and df["size"].tolist() == [1, 22, 333]
    monkeypatch.setenv("PINFOLD_HOME", str(node.home))
    assert pandas.read_csv(url)["name"].tolist() == ["alpha", "beta", "gamma"]


def test_content_no_peer_sends_in_time_is_timeout_error(tmp_path: Path) -> None:
    """A CID only a silent peer (SIGSTOPped, connected) could have: the read
    raises the standard ``TimeoutError`` naming the CID, not the client's RpcError."""
    import os
    import signal

    from tests.support.daemon import cli_json

    missing = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    a = DaemonProcess(tmp_path, "a", config="[bitswap]\nfetch_timeout_s = 1.0\n").start()
    silent = DaemonProcess(tmp_path, "silent").start()
    try:
        cli_json(a.home, "peers", "connect", cli_json(silent.home, "id")["addresses"][0])
        os.kill(silent.pid, signal.SIGSTOP)
        fs = fsspec.filesystem("pinfold", socket=str(a.home / "rpc.sock"), skip_instance_cache=True)
        with pytest.raises(TimeoutError) as info:
            fs.cat_file(missing, start=0, end=10)
        assert missing in str(info.value)
    finally:
        os.kill(silent.pid, signal.SIGCONT)
        for d in (a, silent):
            d.stop()
            d.kill9()
