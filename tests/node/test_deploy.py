"""deploy/: the systemd unit, the installer, Prometheus rules and config, the Grafana dashboard.

The unit is checked by ``systemd-analyze`` and the rules by ``promtool`` (Debian
packages ``systemd`` and ``prometheus``; ``make deploy-tools`` installs them).
These tests skip with the reason when a tool is missing. The metric-name test
scrapes a real node's /metrics and checks that every name the rules and the
dashboard use is there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from pinfold.config import load, render, replace
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "pinfold.service"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "pinfold.json"
PINFOLD_BIN = Path(sys.executable).parent / "pinfold"

#: The exposure score `systemd-analyze security` may give the unit at most.
MAX_EXPOSURE = 2.5


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian: apt-get install "
                    f"{'prometheus' if name == 'promtool' else 'systemd'}; `make deploy-tools`)")
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def unit_directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file: key -> values in order (comments skipped)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


# ---------------------------------------------------------------------- systemd unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = _tool("systemd-analyze")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/pinfold --home /var/lib/pinfold daemon\n" in text
    # verify insists that ExecStart's binary exists; this test host has pinfold in the
    # virtual environment, not in /usr/local/bin (where install-service.sh links it).
    # Everything else in the unit is checked as shipped.
    assert PINFOLD_BIN.exists(), PINFOLD_BIN
    unit = tmp_path / "pinfold.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/pinfold",
                                 f"ExecStart={PINFOLD_BIN}"))
    res = _run(tool, "verify", "--man=no", "--generators=no", str(unit))
    assert res.returncode == 0, res.stderr
    assert "pinfold.service" not in res.stderr, res.stderr  # no warnings about our unit


def test_systemd_analyze_verify_rejects_a_broken_unit(tmp_path: Path) -> None:
    """The verify test above can fail: a misspelled directive is reported."""
    tool = _tool("systemd-analyze")
    unit = tmp_path / "pinfold.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/local/bin/pinfold",
                                             f"ExecStart={PINFOLD_BIN}")
                    .replace("ProtectHome=yes", "ProtectHomes=yes"))
    res = _run(tool, "verify", "--man=no", "--generators=no", str(unit))
    assert "ProtectHomes" in res.stderr


def test_systemd_security_exposure_is_at_most_2_5() -> None:
    tool = _tool("systemd-analyze")
    res = _run(tool, "security", "--offline=true", "--no-pager", str(UNIT))
    m = re.search(r"Overall exposure level for pinfold\.service: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security: exposure {score}")
    assert score <= MAX_EXPOSURE, res.stdout


def test_unit_is_type_notify_with_watchdog_reload_and_sandbox() -> None:
    d = unit_directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(one["WatchdogSec"]) >= 10
    assert one["Restart"] == "on-failure"
    assert (one["User"], one["StateDirectory"], one["RuntimeDirectory"]) == \
        ("pinfold", "pinfold", "pinfold")
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectControlGroups", "RestrictSUIDSGID",
                "LockPersonality", "MemoryDenyWriteExecute", "RestrictNamespaces"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert d["SystemCallFilter"][0] == "@system-service"
    assert set(one["RestrictAddressFamilies"].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6",
                                                          "AF_NETLINK"}
    # The daemon stops within TimeoutStopSec: it gives in-flight work 30 s.
    assert int(one["TimeoutStopSec"]) > 30


def _mdwe_supported() -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(66, 0, 0, 0, 0) >= 0  # PR_GET_MDWE


#: A child Python that turns MDWE on for itself, then execs the daemon (prctl
#: PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN; inherited across fork and exec).
MDWE_WRAPPER = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "PR_SET_MDWE")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _start_under_mdwe(tmp_path: Path, name: str) -> DaemonProcess:
    if not _mdwe_supported():
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(MDWE_WRAPPER)
    d = DaemonProcess(tmp_path, name)
    d.init()
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(
            [sys.executable, str(wrapper), "-m", "pinfold.daemon.cli", "--home", str(d.home),
             "daemon"], stdout=log, stderr=subprocess.STDOUT)
    return d


def test_memory_deny_write_execute_is_safe_for_the_daemon(tmp_path: Path) -> None:
    """The unit sets MemoryDenyWriteExecute=yes; the daemon must run under it.

    Linux >= 6.3 offers the same rule to any process (prctl PR_SET_MDWE), so the
    real daemon runs under it here, answers RPC, stores and reads a DAG.
    """
    d = _start_under_mdwe(tmp_path, "mdwe")
    try:
        assert d.wait_ready(timeout=60)["peer_id"]
        status = Path(f"/proc/{d.pid}/status").read_text()
        assert "MemoryDenyWriteExecute" not in status or \
            re.search(r"^MemoryDenyWriteExecute:\s+1$", status, re.MULTILINE), status
        with d.client() as c:
            res = c.add_stream([b"x" * 3_000_000])
            assert b"".join(c.cat(res["cid"])) == b"x" * 3_000_000
    finally:
        d.stop()
        d.kill9()


def test_memory_deny_write_execute_is_safe_for_noise_yamux_bitswap(tmp_path: Path) -> None:
    """A peer connects to a daemon under MDWE (Noise, Yamux) and fetches by Bitswap."""
    a = _start_under_mdwe(tmp_path, "mdwe-a")
    b = DaemonProcess(tmp_path, "mdwe-b")
    try:
        info = a.wait_ready(timeout=60)
        if not info["addresses"]:
            pytest.skip("the daemon reports no libp2p listen addresses (host not running)")
        b.start()
        data = os.urandom(2_500_000)
        with a.client() as ca, b.client() as cb:
            cid = ca.add_stream([data])["cid"]
            cb.connect(info["addresses"][0])
            assert b"".join(cb.cat(cid)) == data
    finally:
        for d in (b, a):
            d.stop()
            d.kill9()


# ---------------------------------------------------------------------- installer


def test_install_service_stages_unit_user_and_home(tmp_path: Path) -> None:
    _tool("systemd-sysusers")
    dest = tmp_path / "root"
    env = {**os.environ, "DESTDIR": str(dest), "PINFOLD": str(PINFOLD_BIN)}
    for _ in range(2):  # a second run (an upgrade) keeps the home
        res = subprocess.run(["sh", str(DEPLOY / "install-service.sh"), "--no-start"],
                             env=env, check=False, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
    assert (dest / "etc/systemd/system/pinfold.service").read_text() == UNIT.read_text()
    passwd = (dest / "etc/passwd").read_text()
    assert re.search(r"^pinfold:x:\d+:\d+:pinfold storage daemon:/var/lib/pinfold:"
                     r"/usr/sbin/nologin$", passwd, re.MULTILINE), passwd
    assert os.readlink(dest / "usr/local/bin/pinfold") == str(PINFOLD_BIN)
    home = dest / "var/lib/pinfold"
    assert load(home / "config.toml").rpc.socket == "/run/pinfold/rpc.sock"
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (home / "config.toml").stat().st_mode & 0o777 == 0o640
    assert res.stdout.count("initialised") == 0  # only the first run initialised


def test_install_service_takes_a_cluster_config(tmp_path: Path) -> None:
    _tool("systemd-sysusers")
    dest = tmp_path / "root"
    env = {**os.environ, "DESTDIR": str(dest), "PINFOLD": str(PINFOLD_BIN),
           "CONFIG": str(DEPLOY / "config.toml")}
    res = subprocess.run(["sh", str(DEPLOY / "install-service.sh"), "--no-start"], env=env,
                         check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (dest / "var/lib/pinfold/config.toml").read_text() == \
        (DEPLOY / "config.toml").read_text()


def test_sysusers_file_creates_the_pinfold_user(tmp_path: Path) -> None:
    tool = _tool("systemd-sysusers")
    (tmp_path / "etc/sysusers.d").mkdir(parents=True)
    shutil.copy(DEPLOY / "pinfold.sysusers", tmp_path / "etc/sysusers.d/pinfold.conf")
    res = _run(tool, f"--root={tmp_path}", "pinfold.conf")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^pinfold:x:\d+:", (tmp_path / "etc/group").read_text(), re.MULTILINE)


# ---------------------------------------------------------------------- example config


def test_example_cluster_config_loads_and_matches_the_other_files() -> None:
    c = load(DEPLOY / "config.toml")
    assert c.cluster.name == "models"
    assert len(set(c.cluster.trusted_peers)) == 3
    # Bootstrap peers are the two other trusted nodes.
    boot_ids = {a.rsplit("/p2p/", 1)[1] for a in c.node.bootstrap}
    assert len(boot_ids) == 2 and boot_ids < set(c.cluster.trusted_peers)
    assert c.rpc.socket == "/run/pinfold/rpc.sock"  # the unit's RuntimeDirectory
    assert c.replication.rmin <= c.replication.rmax <= 3
    # Prometheus scrapes this node's metrics address.
    assert f"- {c.metrics.listen}\n" in (PROM / "prometheus.yml").read_text()


# ---------------------------------------------------------------------- Prometheus


def test_promtool_check_rules() -> None:
    tool = _tool("promtool")
    res = _run(tool, "check", "rules", "alerts.yml", cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 6 rules found" in res.stdout


def test_promtool_check_config() -> None:
    tool = _tool("promtool")
    res = _run(tool, "check", "config", "prometheus.yml", cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout


def test_promtool_rule_unit_tests_fire_the_under_replication_alert(tmp_path: Path) -> None:
    tool = _tool("promtool")
    tests = (PROM / "alerts_test.yml").read_text()
    assert "alertname: PinfoldPinsUnderReplicated" in tests
    res = _run(tool, "test", "rules", "alerts_test.yml", cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout

    # The same tests fail if the rule ignored the configured grace period:
    # with n1's grace at 10 min, the 7m expectation for n1 must not hold.
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    broken = tests.replace("""'pinfold_replication_grace_seconds{instance="n1:9401", job="pinfold"}'
        values: '60x80'""", """'pinfold_replication_grace_seconds{instance="n1:9401", job="pinfold"}'
        values: '600x80'""")
    assert broken != tests
    (tmp_path / "alerts_test.yml").write_text(broken)
    res = _run(tool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert res.returncode != 0
    assert "PinfoldPinsUnderReplicated, time: 7m" in res.stdout + res.stderr


# ---------------------------------------------------------------------- Grafana


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def test_dashboard_is_well_formed() -> None:
    dash = _dashboard()
    assert dash["uid"] == "pinfold-overview" and dash["title"] == "pinfold"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["instance"]["query"]["query"].startswith("label_values(pinfold_")
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


# ---------------------------------------------------------------------- metrics


NAME_RE = re.compile(r"\bpinfold_[a-z0-9_]+")


def referenced_metric_names() -> set[str]:
    """Sample names the alert rules and the dashboard use."""
    names = set(NAME_RE.findall((PROM / "alerts.yml").read_text()))
    for expr in dashboard_exprs():
        names |= set(NAME_RE.findall(expr))
    return names


def test_rules_and_dashboard_reference_the_expected_families() -> None:
    names = referenced_metric_names()
    # A sanity check of the extraction itself (the scrape test relies on it).
    assert {"pinfold_cluster_pins", "pinfold_replication_grace_seconds",
            "pinfold_rpc_requests_total", "pinfold_blockstore_map_used_bytes",
            "pinfold_rpc_request_duration_seconds_bucket",
            "pinfold_replication_repairs_total"} <= names
    assert len(names) >= 30


def _scrape(d: DaemonProcess) -> str:
    with d.client() as c:
        address = c.id()["metrics"]  # also makes one RPC request, so RPC series exist
    assert address, "the node has no metrics endpoint"
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


UNBOUNDED_LABELS = {"cid", "peer_id", "peer", "path", "name", "multiaddr", "addr"}


@pytest.mark.parametrize("mode", ["standalone", "cluster"])
def test_scraped_metrics_parse_and_hold_every_name_rules_and_dashboard_use(
        tmp_path: Path, mode: str) -> None:
    d = DaemonProcess(tmp_path, mode)
    d.init()
    if mode == "cluster":
        path = d.home / "config.toml"
        path.write_text(render(replace(load(path), cluster={"name": "ops-test"})))
    with d:
        text = _scrape(d)
    families = list(text_string_to_metric_families(text))
    assert families
    samples = {s.name for f in families for s in f.samples}
    missing = sorted(referenced_metric_names() - samples)
    assert not missing, f"metrics used by deploy/ but not exported by a {mode} node: {missing}"


def test_scraped_metric_names_follow_prometheus_conventions(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, "conv") as d:
        text = _scrape(d)
    families = list(text_string_to_metric_families(text))
    for f in families:
        assert f.name.startswith("pinfold_"), f.name
        assert f.documentation.strip(), f"{f.name} has no help text"
        words = f.name.split("_")
        for unit in ("bytes", "seconds"):
            if unit in words:
                assert words[-1] == unit, f"{f.name}: the unit goes last"
        assert not {"milliseconds", "ms", "kb", "mb", "kib", "mib"} & set(words), f.name
        for s in f.samples:
            if f.type == "counter":
                assert s.name == f.name + "_total", s.name
            assert not UNBOUNDED_LABELS & set(s.labels), f"{s.name} has an unbounded label"


# ---------------------------------------------------------------------- backup / restore

#: The hot-backup command of README.md "Operating pinfold" (run there as root).
BACKUP_SNIPPET = ("import lmdb, sys; "
                  "lmdb.open(sys.argv[1], readonly=True).copy(sys.argv[2], compact=True)")


def test_readme_backup_command_copies_a_running_store_and_restores(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert BACKUP_SNIPPET in readme, "README's backup command changed: update this test"
    data = os.urandom(3 * 1024 * 1024 + 7)
    backup = tmp_path / "backup"
    backup.mkdir()
    d = DaemonProcess(tmp_path, "bk")
    with d, d.client() as c:
        cid = c.add_stream([data], pin=True)["cid"]
        # The copy runs while the daemon holds the store open and keeps writing.
        res = subprocess.run([sys.executable, "-c", BACKUP_SNIPPET, str(d.home / "store"),
                              str(backup)], check=False, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        c.add_stream([b"written after the backup"])
    assert (backup / "data.mdb").stat().st_size > len(data)
    # Restore: daemon stopped, store replaced by the copy, daemon started again.
    store = d.home / "store"
    shutil.rmtree(store)
    store.mkdir(mode=0o700)
    shutil.copy(backup / "data.mdb", store / "data.mdb")
    with d, d.client() as c:
        assert b"".join(c.cat(cid)) == data
        assert any(p["cid"] == cid for p in c.pins())
