"""systemd integration: sd_notify, the watchdog, SIGHUP reload and journald logging.

The process-level tests run the real daemon with a real ``NOTIFY_SOCKET``: a
datagram socket this test owns, as systemd's manager would, and read what the
daemon tells it (sd_notify(3)).
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from pinfold.config import Config, ConfigError, load, render, replace
from pinfold.daemon import sdnotify
from pinfold.daemon.service import (
    LIVE_KEYS,
    OneLineFormatter,
    Watchdog,
    configure_logging,
    plan_reload,
    stream_is_journal,
    syslog_priority,
)

from tests.support.daemon import DaemonProcess
from tests.support.wait import wait_until

# ---------------------------------------------------------------------- helpers


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sdnotify._address(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        """Read every datagram waiting now; returns all received so far."""
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return self.messages
            self.messages.append(data.decode())

    def assignments(self) -> list[str]:
        """Every ``KEY=VALUE`` line received so far, in order."""
        return [line for m in self.poll() for line in m.split("\n")]

    def wait_for_line(self, line: str, *, after: int = 0, timeout: float = 30.0) -> int:
        """Wait until ``line`` arrives at index >= ``after``; returns its index."""
        def found() -> int | None:
            lines = self.assignments()
            for i in range(after, len(lines)):
                if lines[i] == line:
                    return i + 1  # truthy even for index 0
            return None

        return wait_until(found, timeout_s=timeout, what=f"{line!r} on NOTIFY_SOCKET") - 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="pfn-", dir="/tmp") as d:
        lst = NotifyListener(os.path.join(d, "notify.sock"))
        try:
            yield lst
        finally:
            lst.close()


# ---------------------------------------------------------------------- sd_notify


def test_notify_sends_one_datagram_to_a_path_socket(listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": listener.path}
    assert sdnotify.notify("READY=1\nSTATUS=serving", environ=env) is True
    assert listener.poll() == ["READY=1\nSTATUS=serving"]


def test_notify_abstract_namespace() -> None:
    name = f"@pinfold-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = NotifyListener(name)
    try:
        assert sdnotify.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": name})
        assert lst.poll() == ["WATCHDOG=1"]
    finally:
        lst.close()


def test_notify_without_socket_or_with_a_dead_one_is_a_no_op(tmp_path: Path) -> None:
    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


@pytest.mark.parametrize("bad", ["", "READY", "READY=1\nnonsense"])
def test_notify_rejects_malformed_state(bad: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sdnotify.notify(bad, environ={})


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert sdnotify.watchdog_interval_s({}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}
    assert sdnotify.watchdog_interval_s(env, pid=4242) == 1.0
    assert sdnotify.watchdog_interval_s(env, pid=4243) is None  # meant for another process
    with pytest.raises(ValueError, match="WATCHDOG_USEC"):
        sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30s"})
    with pytest.raises(ValueError, match="WATCHDOG_PID"):
        sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"})


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    now = sdnotify.monotonic_usec()
    assert before <= now <= before + 5_000_000


# ---------------------------------------------------------------------- watchdog core


async def test_watchdog_pings_every_interval_while_probes_pass(autojump_clock) -> None:
    sent: list[tuple[float, str]] = []
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        await trio.sleep(0.1)

    dog = Watchdog(interval_s=1.0, probes={"p": probe},
                   send=lambda s: sent.append((trio.current_time(), s)))
    with trio.move_on_after(3.5):
        await dog.run()
    assert [s for _, s in sent] == ["WATCHDOG=1"] * 4
    # Pings follow a fixed schedule (t=0, 1, 2, 3 plus the probe's 0.1 s), not drifting.
    assert [round(t, 6) for t, _ in sent] == [0.1, 1.1, 2.1, 3.1]
    assert calls == 4
    assert dog.statistics().pings == 4 and dog.statistics().withheld == 0


async def test_watchdog_withholds_pings_while_a_probe_fails_or_hangs(autojump_clock) -> None:
    sent: list[str] = []
    state = {"mode": "ok"}

    async def store() -> None:
        if state["mode"] == "fail":
            raise OSError("mdb_env_stat: I/O error")
        if state["mode"] == "hang":
            await trio.sleep_forever()

    dog = Watchdog(interval_s=1.0, probes={"store": store}, send=sent.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(dog.run)
        await trio.sleep(0.25)
        assert sent == ["WATCHDOG=1"]
        state["mode"] = "fail"
        await trio.sleep(1.0)  # the check at t=1 fails
        assert sent[-1] == "STATUS=unhealthy: store probe failed: OSError: mdb_env_stat: I/O error"
        state["mode"] = "hang"
        await trio.sleep(1.5)  # the check at t=2 times out at t=2.5
        assert sent[-1] == "STATUS=unhealthy: store probe did not answer within 0.5 s"
        assert sent.count("WATCHDOG=1") == 1
        state["mode"] = "ok"
        await trio.sleep(1.0)  # the check at t=3 passes
        # Recovered: the ping comes back and clears the status text.
        assert sent[-1] == "WATCHDOG=1\nSTATUS=serving"
        nursery.cancel_scope.cancel()
    st = dog.statistics()
    assert (st.pings, st.withheld, st.last_problem) == (2, 2, "")


async def test_watchdog_cancellation_is_not_a_probe_failure(autojump_clock) -> None:
    sent: list[str] = []

    async def slow() -> None:
        await trio.sleep(0.4)

    dog = Watchdog(interval_s=1.0, probes={"slow": slow}, send=sent.append)
    with trio.move_on_after(0.2) as scope:
        await dog.run()
    assert scope.cancelled_caught
    assert sent == []  # neither a ping nor an "unhealthy" status
    assert dog.statistics().withheld == 0


def test_watchdog_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        Watchdog(interval_s=0, probes={})
    with pytest.raises(ValueError, match="probe_timeout_s"):
        Watchdog(interval_s=1, probes={}, probe_timeout_s=-1)


# ---------------------------------------------------------------------- reload core


def test_plan_reload_applies_live_keys_and_defers_the_rest() -> None:
    running = Config()
    new = replace(running, log={"level": "debug"},
                  replication={"repair_grace_s": 5.0, "concurrent_pins": 9},
                  node={"listen": ["/ip4/127.0.0.1/tcp/9"], "bootstrap": ["/ip4/1.2.3.4/tcp/1/p2p/12D3KooWDU9sJ75avPT257JWaXe4suVjG1qPQAqhMNeNWgMf8aeH"]})
    plan = plan_reload(running, new)
    assert [c.key for c in plan.applied] == ["log.level", "node.bootstrap",
                                             "replication.repair_grace_s"]
    assert [c.key for c in plan.needs_restart] == ["node.listen", "replication.concurrent_pins"]
    # The running config takes the live values and keeps the restart-only ones.
    assert plan.config.log.level == "debug"
    assert plan.config.replication.repair_grace_s == 5.0
    assert plan.config.node.bootstrap == ["/ip4/1.2.3.4/tcp/1/p2p/12D3KooWDU9sJ75avPT257JWaXe4suVjG1qPQAqhMNeNWgMf8aeH"]
    assert plan.config.node.listen == running.node.listen
    assert plan.config.replication.concurrent_pins == running.replication.concurrent_pins
    assert plan.needs_restart[0].describe() == \
        "node.listen (['/ip4/0.0.0.0/tcp/4101'] -> ['/ip4/127.0.0.1/tcp/9'])"


def test_plan_reload_of_an_unchanged_config_is_empty() -> None:
    plan = plan_reload(Config(), Config())
    assert plan.applied == () and plan.needs_restart == () and plan.config == Config()


def test_plan_reload_validates_the_merged_config() -> None:
    # rmin is live but lowering rmax below it is not possible with a restart-only rmax.
    running = Config()
    new = replace(running, replication={"rmin": 3, "rmax": 3})
    ok = plan_reload(running, new)
    assert (ok.config.replication.rmin, ok.config.replication.rmax) == (3, 3)
    live_without_rmax = LIVE_KEYS - {"replication.rmax"}
    with pytest.raises(ConfigError, match="replication.rmax: must be >= rmin"):
        plan_reload(Config(), replace(Config(), replication={"rmin": 4, "rmax": 4}),
                    live_keys=live_without_rmax)


def test_every_live_key_exists_in_the_schema() -> None:
    import dataclasses

    from pinfold.config.schema import SECTIONS

    keys = {f"{name}.{sf.name}" for name, f in SECTIONS.items()
            for sf in dataclasses.fields(f.default_factory)}
    assert LIVE_KEYS <= keys, sorted(LIVE_KEYS - keys)
    # Bound at start: never claimed live.
    assert not LIVE_KEYS & {"node.listen", "rpc.socket", "metrics.listen", "cluster.name",
                            "blockstore.max_size_bytes", "blockstore.sync"}


# ---------------------------------------------------------------------- logging


def test_syslog_priorities() -> None:
    assert [syslog_priority(x) for x in (logging.DEBUG, logging.INFO, logging.WARNING,
                                        logging.ERROR, logging.CRITICAL)] == [7, 6, 4, 3, 2]


def _record(level: int, msg: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("pinfold.test", level, __file__, 1, msg, (), exc_info)


def test_journal_format_has_priority_and_no_timestamp() -> None:
    f = OneLineFormatter(journal=True)
    assert f.format(_record(logging.WARNING, "peer dead")) == \
        "<4>WARNING pinfold.test: peer dead"


def test_terminal_format_has_a_timestamp_and_one_line_per_event() -> None:
    f = OneLineFormatter(journal=False)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        import sys

        line = f.format(_record(logging.ERROR, "failed", sys.exc_info()))
    assert "\n" not in line
    assert line[:4].isdigit()  # the asctime year
    assert " ERROR pinfold.test: failed | Traceback" in line
    assert line.endswith("RuntimeError: boom | second line")


def test_stream_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as fh:
        st = os.fstat(fh.fileno())
        assert stream_is_journal(fh, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journal(fh, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stream_is_journal(fh, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(fh, {})
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    lp = logging.getLogger("libp2p")
    saved = (root.handlers[:], root.level, lp.handlers[:], lp.level, lp.propagate)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        lp.handlers[:], lp.level, lp.propagate = saved[2], saved[3], saved[4]
        logging.captureWarnings(False)


def test_configure_logging_routes_libp2p_into_pinfold_handler(restore_logging: None,
                                                               tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as fh:
        st = os.fstat(fh.fileno())
        configure_logging("info", stream=fh,
                          environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        logging.getLogger("libp2p.network.swarm").warning("dial failed")
        logging.getLogger("libp2p.network.swarm").info("per-connection chatter")
        logging.getLogger("pinfold.node").info("ready")
        logging.getLogger("pinfold.node").debug("hidden at info")
    lines = (tmp_path / "log").read_text().splitlines()
    assert lines == ["<4>WARNING libp2p.network.swarm: dial failed",
                     "<6>INFO pinfold.node: ready"]


# ---------------------------------------------------------------------- real daemon


def _start(tmp_path: Path, listener: NotifyListener, **env: str) -> DaemonProcess:
    d = DaemonProcess(tmp_path, "svc", env={"NOTIFY_SOCKET": listener.path, **env})
    d.start(wait=False)
    return d


def test_daemon_sends_ready_watchdog_stopping_in_order(tmp_path: Path,
                                                       listener: NotifyListener) -> None:
    d = _start(tmp_path, listener, WATCHDOG_USEC="2000000")  # ping every 1 s
    try:
        ready = listener.wait_for_line("READY=1")
        # READY=1 comes only once the RPC socket answers.
        assert d.wait_ready(timeout=10)["peer_id"]
        first = listener.wait_for_line("WATCHDOG=1", after=ready)
        second = listener.wait_for_line("WATCHDOG=1", after=first + 1)
        assert ready < first < second
        d.proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for_line("STOPPING=1", after=second)
        assert d.proc.wait(timeout=30) == 0
    finally:
        d.stop()
        d.kill9()
    lines = listener.assignments()
    assert lines.index("READY=1") == ready and stopping > second
    assert "WATCHDOG=1" not in lines[stopping:]  # no pings once shutdown began
    assert lines.count("READY=1") == 1
    assert "systemd watchdog on" in d.log()


def test_daemon_without_watchdog_usec_sends_no_pings(tmp_path: Path,
                                                     listener: NotifyListener) -> None:
    d = _start(tmp_path, listener)
    try:
        listener.wait_for_line("READY=1")
        d.wait_ready(timeout=10)
        with d.client() as c:
            c.shutdown()  # the shutdown RPC, not a signal
        listener.wait_for_line("STOPPING=1")
        assert d.proc.wait(timeout=30) == 0
    finally:
        d.stop()
        d.kill9()
    assert "WATCHDOG=1" not in listener.assignments()


def _rewrite_config(home: Path, **sections: dict) -> None:
    path = home / "config.toml"
    path.write_text(render(replace(load(path), **sections)))


def test_sighup_reloads_live_keys_and_names_the_rest(tmp_path: Path,
                                                     listener: NotifyListener) -> None:
    d = _start(tmp_path, listener)

    def full_log() -> str:
        return d.log_path.read_text(errors="replace")

    try:
        ready = listener.wait_for_line("READY=1")
        d.wait_ready(timeout=10)
        _rewrite_config(d.home, log={"level": "debug"},
                        replication={"repair_grace_s": 7.5},
                        rpc={"max_connections": 3})
        d.proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for_line("RELOADING=1", after=ready + 1)
        again = listener.wait_for_line("READY=1", after=reloading)
        assert reloading < again
        log = wait_until(lambda: "reload: applied" in full_log() and full_log(), timeout_s=10,
                       what="the reload log line")
        assert "reload: applied log.level ('info' -> 'debug'), " \
               "replication.repair_grace_s (60.0 -> 7.5)" in log
        assert "rpc.max_connections (256 -> 3) changed in config.toml; it takes effect " \
               "after a restart" in log
        assert any(m.startswith("MONOTONIC_USEC=") for m in listener.assignments())

        # A broken file changes nothing and the node keeps serving.
        (d.home / "config.toml").write_text("[replication]\nrmin = 0\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "replication.rmin: must be >= 1" in full_log(), timeout_s=10,
                 what="the reload error")
        assert "keeping the running configuration" in full_log()
        # (The client reads config.toml for the socket path, so name the socket.)
        from pinfold.client import Client

        with Client(socket_path=d.home / "rpc.sock") as c:
            assert c.id()["peer_id"]
    finally:
        assert d.stop() == 0
        d.kill9()


async def test_node_probes_pass_on_a_healthy_node_and_fail_on_a_hung_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pinfold.daemon.home import init_home
    from pinfold.daemon.node import Node
    from pinfold.daemon.service import node_probes

    config = replace(Config(), node={"listen": ["/ip4/127.0.0.1/tcp/0"]}, metrics={"listen": ""},
                     gateway={"listen": ""})
    home = await trio.to_thread.run_sync(init_home, tmp_path / "h", config)
    node = Node(home, home.load_config())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        dog = Watchdog(interval_s=2.0, probes=node_probes(node, timeout_s=1.0),
                       send=lambda s: None)
        assert await dog.check() == ""
        # Wedge the store: stat() blocks in its worker thread until released.
        release = threading.Event()
        store_cls = type(node.store)
        real_stat = store_cls.stat
        monkeypatch.setattr(store_cls, "stat", lambda self: (release.wait(30), real_stat(self))[1])
        try:
            with trio.fail_after(10):
                problem = await dog.check()
        finally:
            release.set()
        assert problem == "store probe did not answer within 1 s"
        monkeypatch.setattr(store_cls, "stat", real_stat)
        assert await dog.check() == ""
        node.request_stop()


def test_daemon_logs_for_journald_one_line_per_event_and_not_per_block(tmp_path: Path) -> None:
    # The harness appends the daemon's stderr to d.log_path: make that file "the
    # journal stream" the way systemd would ($JOURNAL_STREAM = device:inode).
    log_path = tmp_path / "jr.log"  # DaemonProcess(tmp_path, "jr").log_path
    log_path.touch()
    st = log_path.stat()
    d = DaemonProcess(tmp_path, "jr", env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert d.log_path == log_path
    with d:
        before = d.log_path.read_text().splitlines()
        data = os.urandom(8 * 1024 * 1024 + 1)  # 9 leaves + 1 root block
        with d.client() as c:
            res = c.add_stream([data[i:i + 65536] for i in range(0, len(data), 65536)])
            assert res["blocks"] == 10
            assert b"".join(c.cat(res["cid"])) == data
        after = d.log_path.read_text().splitlines()
    lines = d.log_path.read_text().splitlines()
    assert lines, "the daemon logged nothing"
    for line in lines:
        # "<6>INFO pinfold.node: ..." - a syslog priority, a level, no timestamp.
        assert re.match(r"<[0-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ", line), line
    assert any(line.startswith("<6>INFO pinfold.node: pinfold ") for line in lines)
    # Adding and reading 10 blocks logs far fewer than 10 lines at INFO.
    assert len(after) - len(before) < res["blocks"] // 2, after[len(before):]


async def test_rpc_probe_counts_a_full_server_as_alive(tmp_path: Path) -> None:
    """A server at its connection limit refuses with too_many_connections: busy, not wedged."""
    from types import SimpleNamespace

    from pinfold.daemon.rpc.connection import RpcConnection
    from pinfold.daemon.rpc.server import RpcLimits, RpcServer
    from pinfold.daemon.rpc.wire import RpcError
    from pinfold.daemon.service import node_probes

    async def id_(call: object) -> dict:
        return {"peer_id": "test"}

    with tempfile.TemporaryDirectory(prefix="pfr-", dir="/tmp") as d:
        path = Path(d) / "rpc.sock"
        server = RpcServer(path, {"id": id_}, daemon_version="1",
                           limits=RpcLimits(max_connections=1))
        probe = node_probes(SimpleNamespace(socket_path=path, store=None), timeout_s=2.0)["rpc"]
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            with trio.fail_after(10):
                await probe()  # an idle server answers
            # Take the only connection once the server has seen the probe's one close.
            # (Connecting blocks, a sync client: do it off the trio thread.)
            with trio.fail_after(10):
                while True:
                    try:
                        busy = await trio.to_thread.run_sync(
                            lambda: RpcConnection(path, timeout=10))
                        break
                    except RpcError as exc:
                        assert exc.code == "too_many_connections"
                        await trio.sleep(0.01)  # poll the condition again
            try:
                await trio.to_thread.run_sync(busy.call, "id")  # holds the only connection

                def second() -> str:
                    try:
                        conn = RpcConnection(path, timeout=10)
                    except RpcError as exc:
                        return exc.code
                    try:
                        conn.call("id")
                        return "answered"
                    except RpcError as exc:
                        return exc.code
                    finally:
                        conn.close()

                assert await trio.to_thread.run_sync(second) == "too_many_connections"
                with trio.fail_after(10):
                    await probe()  # refused, yet alive: no exception
            finally:
                busy.close()
            nursery.cancel_scope.cancel()
