"""Running under a service manager: logging, the systemd watchdog, signals and reload.

Three pieces, each a pure core with a thin trio driver (STYLE.md 1):

- **Logging** (``configure_logging``): one line per event on stderr, with the
  level. Under journald (``$JOURNAL_STREAM`` names our stderr, systemd.exec(5))
  there is no timestamp (journald adds one) and each line starts with the
  ``<N>`` syslog priority prefix of sd-daemon(3), so ``journalctl -p warning``
  filters by level. py-libp2p's loggers, which it detaches on import, are
  routed into the same handler (at WARNING unless ``$LIBP2P_DEBUG`` says more).
- **Watchdog** (``Watchdog``): sends ``WATCHDOG=1`` every half
  ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3)) but only after the node's health
  probes pass: a read of the LMDB store from a worker thread and an ``id``
  round trip through the node's own RPC socket. Both come back through the trio
  loop, so a wedged loop, a hung store or a dead RPC server stops the pings and
  systemd restarts the node after ``WatchdogSec``.
- **Reload** (``plan_reload``, ``reload_node``): on SIGHUP (``systemctl
  reload``) config.toml is read again; keys in ``LIVE_KEYS`` take effect at
  once, every other changed key is logged as needing a restart and keeps its
  running value, so the node never runs a half-applied configuration.

``supervise`` ties them to a running node, typed by the ``Supervised`` protocol
(``daemon/parts.py``): ``pinfold/daemon/process.py``'s ``_serve`` calls it after
``READY=1`` and it returns when the node is asked to stop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import trio
from pinfold.config import Config, ConfigError
from pinfold.config.schema import SECTIONS

from pinfold.daemon.parts import ReloadTarget, Supervised
from pinfold.daemon.sdnotify import monotonic_usec, notify, watchdog_interval_s

log = logging.getLogger("pinfold.service")

# ---------------------------------------------------------------------- logging

#: syslog priorities (sd-daemon(3) ``SD_ERR`` ...) by logging level.
_SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                    logging.INFO: 6, logging.DEBUG: 7}


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0 emerg .. 7 debug) for a ``logging`` level number."""
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _SYSLOG_PRIORITY[threshold]
    return 7


def stream_is_journal(stream: IO[Any], environ: Mapping[str, str] | None = None) -> bool:
    """True if ``stream`` is connected to journald.

    systemd.exec(5): ``$JOURNAL_STREAM`` holds ``DEVICE:INODE`` of the stream
    systemd connected to the journal; a process should compare it with its own
    stderr, since the variable is inherited by children whose stderr may differ.
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class OneLineFormatter(logging.Formatter):
    """``LEVEL logger: message``, one line per event (tracebacks joined with `` | ``).

    Args:
        journal: prefix the syslog priority (``<4>``) and leave the timestamp to
            journald; otherwise start each line with an ISO-like local timestamp.
    """

    def __init__(self, *, journal: bool) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt if journal else "%(asctime)s " + fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).rstrip("\n").replace("\n", " | ")
        if self.journal:
            return f"<{syslog_priority(record.levelno)}>{text}"
        return text


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"log level must be debug, info, warning or error, got {level!r}")
    return number


def set_log_level(level: str) -> None:
    """Set pinfold's log level (``log.level``) live; py-libp2p stays at WARNING or above.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    number = _level_number(level)
    logging.getLogger().setLevel(number)
    if not os.environ.get("LIBP2P_DEBUG"):
        logging.getLogger("libp2p").setLevel(max(logging.WARNING, number))


def configure_logging(level: str, *, stream: IO[str] | None = None,
                      environ: Mapping[str, str] | None = None) -> logging.Handler:
    """Route every logger (pinfold's and py-libp2p's) to one handler on ``stream``.

    Args:
        level: ``log.level`` (debug, info, warning, error).
        stream: where lines go (default ``sys.stderr``).
        environ: where to look for ``$JOURNAL_STREAM`` (default ``os.environ``).

    Returns:
        The installed handler (the root logger's only one).

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    # py-libp2p configures its logger on import (propagate off, no handlers, so
    # its warnings would go to logging.lastResort unformatted): import it first,
    # then attach its tree to the root.
    import libp2p  # noqa: F401

    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(journal=stream_is_journal(stream, environ)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lp = logging.getLogger("libp2p")
    lp.handlers[:] = []
    lp.propagate = True
    set_log_level(level)
    logging.captureWarnings(True)
    return handler


# ---------------------------------------------------------------------- watchdog

Probe = Callable[[], Awaitable[object]]
"""A health check: returns when healthy, raises (or hangs past its deadline) when not."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogStats:
    """What the watchdog has done so far.

    Attributes:
        pings: ``WATCHDOG=1`` messages sent.
        withheld: ping slots skipped because a probe failed.
        last_problem: the latest failing probe's description ("" when healthy).
    """

    pings: int
    withheld: int
    last_problem: str


class Watchdog:
    """Pings systemd's watchdog while every probe passes (sd_watchdog_enabled(3)).

    Each ``interval_s`` the probes run one after another, each under a deadline
    of ``probe_timeout_s``; if all pass, ``WATCHDOG=1`` is sent, else the ping is
    withheld, a warning is logged and ``STATUS=`` says which probe failed.
    systemd kills and (with ``Restart=on-failure``) restarts the service when no
    ping arrives for ``WatchdogSec``, i.e. after about two withheld pings.

    Args:
        interval_s: seconds between pings (half of ``$WATCHDOG_USEC``), > 0.
        probes: name -> probe, run in this order.
        send: the notifier (``sdnotify.notify``; tests pass a recorder).
        probe_timeout_s: deadline of each probe in seconds (default ``interval_s / 2``).

    Raises:
        ValueError: ``interval_s`` or ``probe_timeout_s`` is not positive.
    """

    def __init__(self, *, interval_s: float, probes: Mapping[str, Probe],
                 send: Callable[[str], object] = notify,
                 probe_timeout_s: float | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"watchdog interval_s must be > 0, got {interval_s!r}")
        timeout = interval_s / 2 if probe_timeout_s is None else probe_timeout_s
        if not timeout > 0:
            raise ValueError(f"watchdog probe_timeout_s must be > 0, got {probe_timeout_s!r}")
        self.interval_s = interval_s
        self.probe_timeout_s = timeout
        self.probes = dict(probes)
        self._send = send
        self._pings = 0
        self._withheld = 0
        self._last_problem = ""

    def statistics(self) -> WatchdogStats:
        """Pings sent and withheld so far."""
        return WatchdogStats(pings=self._pings, withheld=self._withheld,
                             last_problem=self._last_problem)

    async def check(self) -> str:
        """Run the probes; returns "" when all pass, else what failed (first failure).

        Cancellation propagates; a probe's ``trio.Cancelled`` is never taken as a failure.
        """
        for name, probe in self.probes.items():
            with trio.move_on_after(self.probe_timeout_s) as scope:
                try:
                    await probe()
                except Exception as exc:  # noqa: BLE001 (any failure withholds the ping)
                    return f"{name} probe failed: {type(exc).__name__}: {exc}"
            if scope.cancelled_caught:
                return f"{name} probe did not answer within {self.probe_timeout_s:g} s"
        return ""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Ping every ``interval_s`` while healthy; runs until cancelled."""
        task_status.started()
        next_at = trio.current_time()
        while True:
            problem = await self.check()
            if not problem:
                self._send("WATCHDOG=1" + ("\nSTATUS=serving" if self._last_problem else ""))
                self._pings += 1
            else:
                self._withheld += 1
                log.warning("watchdog: %s; withholding WATCHDOG=1", problem)
                self._send(f"STATUS=unhealthy: {problem}")
            self._last_problem = problem
            next_at = max(next_at + self.interval_s, trio.current_time())
            await trio.sleep_until(next_at)


def node_probes(node: Supervised, *, timeout_s: float) -> dict[str, Probe]:
    """The health probes of a running node: its store and its RPC server.

    - ``store``: ``store.stat()`` in a worker thread (LMDB answers, the thread
      pool is not exhausted);
    - ``rpc``: an ``id`` call over the node's own Unix socket with a
      ``timeout_s`` deadline (the accept loop and the handlers run); a refusal
      with ``too_many_connections`` counts as healthy, so a burst of clients
      does not get the node restarted.

    Both return through the trio loop, which must therefore be running too.
    """
    from pinfold.daemon.rpc.connection import RpcConnection
    from pinfold.daemon.rpc.wire import RpcError

    async def store_probe() -> None:
        store = node.store
        if store is None:
            raise RuntimeError("the store is closed")
        await trio.to_thread.run_sync(store.stat, abandon_on_cancel=True)

    def rpc_roundtrip() -> None:
        try:
            conn = RpcConnection(node.socket_path, connect_timeout=timeout_s, timeout=timeout_s)
            try:
                conn.call("id")
            finally:
                conn.close()
        except RpcError as exc:
            # A server at its connection limit is busy, not wedged: it answered.
            if exc.code != "too_many_connections":
                raise

    async def rpc_probe() -> None:
        await trio.to_thread.run_sync(rpc_roundtrip, abandon_on_cancel=True)

    return {"store": store_probe, "rpc": rpc_probe}


# ---------------------------------------------------------------------- reload

LIVE_KEYS: frozenset[str] = frozenset({
    "log.level",
    "node.bootstrap",
    "cluster.trusted_peers",
    "bitswap.fetch_timeout_s",
    "bitswap.serve",
    "replication.rmin",
    "replication.rmax",
    "replication.p_prior",
    "replication.heartbeat_interval_s",
    "replication.peer_ttl_s",
    "replication.repair_grace_s",
    "replication.replan_interval_s",
    "replication.tombstone_horizon_s",
})
"""Dotted config keys a reload applies to the running node.

``log.level`` is applied here; the others take effect because the components
read them from ``node.config`` when they use them (or through
``node.apply_config(config)`` when the node defines it; ``bitswap.serve`` and
``cluster.trusted_peers`` there also drop the wants held for peers no longer
allowed to fetch). Everything else
(listen addresses, sockets, the store, the cluster name, ...) is bound when the
node starts and needs ``systemctl restart pinfold``.
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChange:
    """One key whose value differs between the running and the re-read config."""

    key: str
    old: Any
    new: Any

    def describe(self) -> str:
        """``key (old -> new)``."""
        return f"{self.key} ({self.old!r} -> {self.new!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadPlan:
    """What a reload does.

    Attributes:
        config: the configuration to run with: the running one with the live keys
            taken from the file (restart-only keys keep their running values).
        applied: changed live keys, sorted by key.
        needs_restart: changed keys that take effect only after a restart, sorted.
    """

    config: Config
    applied: tuple[ConfigChange, ...]
    needs_restart: tuple[ConfigChange, ...]


def config_changes(old: Config, new: Config) -> list[ConfigChange]:
    """Every dotted key whose value differs between ``old`` and ``new``, sorted by key."""
    changes = []
    for toml_name, f in SECTIONS.items():
        a, b = getattr(old, f.name), getattr(new, f.name)
        for sf in dataclasses.fields(a):
            va, vb = getattr(a, sf.name), getattr(b, sf.name)
            if va != vb:
                changes.append(ConfigChange(key=f"{toml_name}.{sf.name}", old=va, new=vb))
    return sorted(changes, key=lambda c: c.key)


def plan_reload(running: Config, new: Config, *,
                live_keys: frozenset[str] = LIVE_KEYS) -> ReloadPlan:
    """Decide what a reload from ``running`` to ``new`` applies (pure).

    Raises:
        ConfigError: the live keys of ``new`` combined with the running values of
            the other keys are invalid (names the dotted key).
    """
    changes = config_changes(running, new)
    applied = tuple(c for c in changes if c.key in live_keys)
    needs_restart = tuple(c for c in changes if c.key not in live_keys)
    per_section: dict[str, dict[str, Any]] = {}
    for c in applied:
        section, _, key = c.key.partition(".")
        per_section.setdefault(section, {})[key] = c.new
    sections = {SECTIONS[name].name: dataclasses.replace(getattr(running, SECTIONS[name].name),
                                                        **values)
                for name, values in per_section.items()}
    return ReloadPlan(config=dataclasses.replace(running, **sections), applied=applied,
                      needs_restart=needs_restart)


async def reload_node(node: ReloadTarget, *, send: Callable[[str], object] = notify
                      ) -> ReloadPlan | None:
    """``systemctl reload``: re-read config.toml and apply what can change live.

    Tells systemd ``RELOADING=1`` first and ``READY=1`` when done. A config file
    that does not load or validate changes nothing (logged as an error naming
    the key).

    Returns:
        The plan carried out, or None when the file was rejected.
    """
    send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
    try:
        new = await trio.to_thread.run_sync(node.home.load_config)
        plan = plan_reload(node.config, new)
    except ConfigError as exc:
        log.error("reload: %s; keeping the running configuration", exc)
        send("READY=1\nSTATUS=serving (last reload failed: see the log)")
        return None
    if plan.applied:
        set_log_level(plan.config.log.level)
        node.config = plan.config
        node.apply_config(plan.config)
        log.info("reload: applied %s", ", ".join(c.describe() for c in plan.applied))
    for c in plan.needs_restart:
        log.warning("reload: %s changed in config.toml; it takes effect after a restart "
                    "(systemctl restart pinfold)", c.describe())
    if not plan.applied and not plan.needs_restart:
        log.info("reload: config.toml unchanged")
    send("READY=1\nSTATUS=serving")
    return plan


# ---------------------------------------------------------------------- supervisor


async def _handle_signals(node: Supervised, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            await reload_node(node)
            continue
        log.info("received %s; stopping", signal.Signals(signum).name)
        node.request_stop()


async def supervise(node: Supervised, signals: AsyncIterator[int], *, stop_requested: trio.Event,
                    environ: Mapping[str, str] | None = None) -> None:
    """Serve signals and the watchdog for a running ``node`` until it is asked to stop.

    SIGINT and SIGTERM call ``node.request_stop()``; SIGHUP reloads the config
    (``reload_node``). When ``$WATCHDOG_USEC`` is set for this process, a
    ``Watchdog`` pings at half of it with ``node_probes``.

    Args:
        node: the started node.
        signals: a ``trio.open_signal_receiver(SIGINT, SIGTERM, SIGHUP)`` receiver.
        stop_requested: set when the node is asked to stop (signal or ``shutdown`` RPC).
        environ: where to read ``WATCHDOG_USEC``/``WATCHDOG_PID`` (default ``os.environ``).

    Raises:
        ValueError: ``$WATCHDOG_USEC`` is malformed.
    """
    interval = watchdog_interval_s(environ)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_handle_signals, node, signals)
        if interval is not None:
            probes = node_probes(node, timeout_s=interval / 2)
            await nursery.start(Watchdog(interval_s=interval, probes=probes).run)
            log.info("systemd watchdog on: WATCHDOG=1 every %.3g s while healthy", interval)
        await stop_requested.wait()
        nursery.cancel_scope.cancel()
