"""Hostile config files given to ``pinfold daemon`` (issue 7, item 3).

Config files with one bad key over a loopback-only config, broken TOML, and
seeded mutations of a valid file: each must stop the daemon at start with a
one-line error on stderr and a non-zero exit, never a traceback. Mutations that
still parse but would listen beyond loopback are not tried (counted as skipped).
"""

from __future__ import annotations

import random
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from pinfold.config import ConfigError, loader

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.campaign import pick, record, seed
from tests.support.fuzzing import mutate
from tests.support.hostile_inputs import _toml_value

SAFE = {"node": {"listen": ["/ip4/127.0.0.1/tcp/0"]}, "metrics": {"listen": "127.0.0.1:0"},
        "gateway": {"listen": ""}}
#: (section, key, value) put over a loopback-only config; each must stop the daemon at start
HOSTILE_KEYS = [
    ("node", "listen", 5), ("node", "listen", ["/ip4/127.0.0.1/udp/1"]),
    ("node", "listen", ["/not/a/multiaddr"]), ("nope", "x", 1), ("rpc", "socket", 7),
    ("blockstore", "max_size_bytes", -1), ("replication", "rmin", 0),
    ("replication", "p_prior", 1.5), ("metrics", "listen", "nowhere"),
    ("bitswap", "serve", "everyone"), ("node", "bootstrap", ["/ip4/127.0.0.1/tcp/1"]),
    ("log", "level", "loud"), ("import", "chunk_size_bytes", 0), ("cluster", "trusted_peers", [1]),
    ("rpc", "socket", "/nonexistent-dir/x/rpc.sock"), ("node", "max_connections", 0),
]
HOSTILE_TEXTS = [b"this is = not [toml\n", b"\xff\xfe\x00garbage", b"[node\nlisten = [",
                 b"[node]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n[node]\n"]


def _toml(tables: dict[str, dict[str, Any]]) -> bytes:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return ("\n".join(lines) + "\n").encode()


def test_hostile_config_files_give_one_line_errors(tmp_path: Path) -> None:
    rng = random.Random(seed() + 6)
    configs: list[bytes] = []
    keys = HOSTILE_KEYS if pick(False, True) else rng.sample(HOSTILE_KEYS, 5)
    texts = HOSTILE_TEXTS if pick(False, True) else HOSTILE_TEXTS[:2]
    for section, key, value in keys:
        tables = {k: dict(v) for k, v in SAFE.items()}
        tables.setdefault(section, {})[key] = value
        configs.append(_toml(tables))
    configs += texts
    base = _toml(SAFE)
    skipped = 0
    for _ in range(pick(3, 40)):
        ops = [(rng.randint(0, 5), rng.randint(0, 1 << 16), rng.randbytes(rng.randint(0, 4)))
               for _ in range(rng.randint(1, 4))]
        text = mutate(base, ops)
        try:
            cfg = loader.from_mapping(tomllib.loads(text.decode()))
        except (ConfigError, ValueError, tomllib.TOMLDecodeError):
            configs.append(text)
            continue
        if (cfg.node.listen == SAFE["node"]["listen"] and cfg.metrics.listen == "127.0.0.1:0"
                and cfg.gateway.listen == ""):
            configs.append(text)  # loopback only: safe to try even if it starts
        else:
            skipped += 1
    daemon = DaemonProcess(tmp_path, "cfg")
    daemon.init()
    cfg_path = daemon.home / "config.toml"
    refused = started = 0
    for text in configs:
        cfg_path.write_bytes(text)
        try:
            proc = run_cli(daemon.home, "daemon", check=False, timeout=20)
        except subprocess.TimeoutExpired:
            started += 1  # a valid config after all: the daemon ran until the timeout
            continue
        err = proc.stderr.decode(errors="replace").strip()
        assert proc.returncode != 0, text
        assert "Traceback" not in err, err
        assert len(err.splitlines()) == 1 and err, (text, err)
        refused += 1
    record("hostile", "config files given to `pinfold daemon`", inputs=len(configs),
           rejected=refused, accepted=started, skipped_not_loopback=skipped, crashes=0,
           state_changes=0, live=True)
    assert refused >= len(keys) + len(texts)
