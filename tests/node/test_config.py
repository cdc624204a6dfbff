"""config/: defaults, TOML round trip, and errors that name the dotted key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pinfold.config import Config, ConfigError, from_mapping, load, render, replace


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load(tmp_path / "nope.toml") == Config()


def test_rendered_defaults_round_trip() -> None:
    text = render()
    assert "[replication]" in text and "# rmin = 2" in text
    assert from_mapping(tomllib.loads(text)) == Config()


def test_rendered_changes_are_uncommented() -> None:
    cfg = replace(Config(), replication={"rmin": 1, "rmax": 5})
    text = render(cfg)
    assert "\nrmin = 1" in text and "\nrmax = 5" in text
    assert from_mapping(tomllib.loads(text)) == cfg


def test_partial_file(tmp_path: Path) -> None:
    p = tmp_path / "config.toml"
    p.write_text('[metrics]\nlisten = ""\n[replication]\nrepair_grace_s = 5\n')
    cfg = load(p)
    assert cfg.metrics.listen == ""
    assert cfg.replication.repair_grace_s == 5.0 and isinstance(cfg.replication.repair_grace_s, float)
    assert cfg.replication.rmin == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"replication": {"rmin": 0}}, "config error: replication.rmin: must be >= 1, got 0"),
        ({"replication": {"rmin": 4, "rmax": 3}}, "replication.rmax: must be >= rmin, got 3"),
        ({"replication": {"rmn": 1}}, "replication.rmn: unknown key"),
        ({"nodes": {}}, "nodes: unknown section"),
        ({"node": {"listen": "/ip4/0.0.0.0/tcp/1"}}, "node.listen: must be a list of strings"),
        ({"node": {"listen": ["tcp://x"]}}, "node.listen: must be a multiaddr"),
        ({"blockstore": {"sync": "yes"}}, "blockstore.sync: must be a boolean, got 'yes'"),
        ({"replication": {"p_prior": 1.0}}, "replication.p_prior: must be in (0, 1), got 1.0"),
        ({"metrics": {"listen": "9401"}}, "metrics.listen: must be HOST:PORT"),
        ({"gateway": {"listen": "8080"}}, "gateway.listen: must be HOST:PORT"),
        ({"gateway": {"listen": "0.0.0.0:8080"}},
         "gateway.listen: is not a loopback address; set gateway.allow_public = true"),
        ({"gateway": {"timeout_s": 0}}, "gateway.timeout_s: must be > 0, got 0.0"),
        ({"gateway": {"max_requests": 0}}, "gateway.max_requests: must be >= 1"),
        ({"gateway": {"max_header_bytes": 10}}, "gateway.max_header_bytes: must be in"),
        ({"import": {"cid_version": 0}}, "import.raw_leaves: must be false when cid_version is 0"),
        ({"bitswap": {"serve": "some"}}, "bitswap.serve: must be \"all\" or \"cluster\""),
        ({"log": []}, "log: must be a table"),
        ({"node": {"bootstrap": ["/ip4/1.2.3.4/tcp/1"]}},
         "node.bootstrap: must be a multiaddr with /p2p/<peer ID>"),
        ({"replication": {"repair_grace_s": float("inf")}},
         "replication.repair_grace_s: must be a finite number"),
        ({"cluster": {"trusted_peers": ["notapeer"]}},
         "cluster.trusted_peers: must be a list of peer IDs"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    assert message in str(info.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "config.toml"
    p.write_text("[node\nlisten = 1\n")
    with pytest.raises(ConfigError, match="config.toml"):
        load(p)
