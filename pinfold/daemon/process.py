"""The ``pinfold daemon`` process: logging, signals and the systemd handshake
around one ``Node``, and a quick exit after a clean stop.

Imports ``node``, ``service`` (signals, reload, watchdog), ``sdnotify`` and ``home``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from pinfold.daemon.home import Home, resolve_home
from pinfold.daemon.node import Node
from pinfold.daemon.sdnotify import notify
from pinfold.daemon.service import configure_logging, supervise


def setup_logging(level: str) -> None:
    """One line per event on stderr; no timestamps under journald, which adds them.

    See ``pinfold/daemon/service.py`` (``configure_logging``): syslog priority prefixes
    under journald, py-libp2p's loggers routed in.
    """
    configure_logging(level)


async def _serve(node: Node) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            await nursery.start(node.run)
            notify("READY=1\nSTATUS=serving")
            # Signals (stop, SIGHUP reload) and the systemd watchdog, until a stop is asked.
            await supervise(node, signals, stop_requested=node._stop)
            notify("STOPPING=1\nSTATUS=stopping")
            nursery.cancel_scope.deadline = trio.current_time() + 30


def run_daemon(home: str | Path | None = None, *, allow_empty_store: bool = False) -> int:
    """``pinfold daemon``: run in the foreground until SIGINT/SIGTERM; after a clean
    stop the process exits 0 at once (``_exit_now``), so this returns only by raising.

    Raises:
        HomeError: the home is incomplete, or its store is missing or replaced
            by an empty one (and not ``allow_empty_store``).
        StoreGone: the store's files were removed or replaced while running.
    """
    root = resolve_home(home)
    h = Home(root=root)
    h.check_initialised()
    config = h.load_config()
    setup_logging(config.log.level)
    node = Node(h, config, allow_empty_store=allow_empty_store)
    trio.run(_serve, node)
    _exit_now(0)
    return 0  # not reached


def _exit_now(code: int) -> None:
    """After a clean stop (store, files and sockets closed; the threads left are
    daemon threads): flush the logs and standard streams and ``os._exit(code)``,
    skipping the interpreter's teardown of the libp2p import graph (about a
    second of CPU on every SIGTERM or ``systemctl stop``)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
