"""The transfer progress bar of ``add``, ``cat``, ``get`` and ``pin add`` on
stderr (rich): bytes of the total, rate, time left and the peers blocks came
from. A resumed transfer's bar starts at the bytes already stored locally
(``local_bytes``) and its rate and time left count only what this run moved. Drawn only when stderr is a terminal, and not for bytes that go to that
same terminal on stdout; otherwise nothing at all is printed, so piped output
and scripts see exactly what they saw without it.

Imports rich, only once a bar is drawn.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Self


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def bar_enabled(*, content_on_stdout: bool = False) -> bool:
    """True when a bar may be drawn: stderr is a terminal and, when the command's
    output goes to stdout, stdout is not a terminal too (the bytes would mix)."""
    try:
        if not sys.stderr.isatty():
            return False
        return not (content_on_stdout and sys.stdout.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class TransferBar:
    """One progress bar, fed by the daemon's progress events (``on_event``) or by
    byte counts of this process (``advance``). Use as a context manager; it is
    removed from view if the command fails, and left complete if it succeeds.

    Args:
        label: what is shown before the bar (``pin add``, ``cat``...).
        total: bytes expected, if known before any event.
        content_on_stdout: the command writes its result bytes to stdout.
        enabled: override the terminal check (tests).

    Attributes:
        enabled: whether anything is drawn.
    """

    def __init__(self, label: str, *, total: int | None = None,
                 content_on_stdout: bool = False, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = bar_enabled(content_on_stdout=content_on_stdout) \
            if enabled is None else enabled
        self._total = total
        self._done = 0
        self._local = 0
        self._progress: Any = None
        self._task: Any = None
        self._t0 = time.monotonic()

    @property
    def on_event(self):
        """The daemon-event callback to pass as ``on_progress`` (None when disabled,
        so the daemon is not asked for events nobody shows)."""
        return self._event if self.enabled else None

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        # Rate and time left are averages over the whole transfer (bytes moved in
        # this run / elapsed), steadier than rich's windowed speed with events
        # 0.25 s apart.
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TextColumn("[progress.data.speed]{task.fields[rate]}"),
            TextColumn("[progress.remaining]{task.fields[eta]}"),
            TextColumn("{task.fields[peers]}"),
            console=Console(file=sys.stderr), refresh_per_second=8)
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=self._total,
                                             completed=self._done, peers="", rate="", eta="")

    def _rates(self, elapsed_s: float | None) -> dict[str, str]:
        """``rate`` and ``eta`` texts from the bytes this run moved (done, less those
        found locally) and the seconds elapsed."""
        from rich.filesize import decimal

        elapsed = elapsed_s if elapsed_s else time.monotonic() - self._t0
        moved = self._done - self._local
        if elapsed <= 0 or moved <= 0:
            return {"rate": "", "eta": ""}
        rate = moved / elapsed
        left = (self._total - self._done) / rate if self._total else None
        return {"rate": f"{decimal(int(rate))}/s",
                "eta": _clock(left) if left is not None and left > 0 else ""}

    def _event(self, ev: dict[str, Any]) -> None:
        """Show a daemon progress event (``{bytes, local_bytes, total, blocks, peers,
        ...}``)."""
        if not self.enabled:
            return
        total = ev.get("total")
        if self._progress is None:
            # Nothing to show until something moved or a size is known (a cluster
            # pin add returns before any fetch: no bar at all).
            if not ev.get("blocks") and total is None:
                return
            self._total = total
            self._start()
        peers = int(ev.get("peers") or 0)
        self._done = int(ev.get("bytes") or 0)
        self._local = min(int(ev.get("local_bytes") or 0), self._done)
        self._progress.update(self._task, completed=self._done, total=total,
                              peers=self._sources(peers), **self._rates(ev.get("elapsed_s")))

    def _sources(self, peers: int) -> str:
        """Where the bytes came from: ``from 2 peers``, ``1.6 MB local``."""
        from rich.filesize import decimal

        parts = [f"from {peers} peer{'s' if peers != 1 else ''}"] if peers else []
        if self._local:
            parts.append(f"{decimal(self._local)} local")
        return ", ".join(parts)

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more done by this process (``add``'s upload)."""
        if not self.enabled:
            return
        self._done += nbytes
        if self._progress is None:
            self._start()
        self._progress.update(self._task, completed=self._done, **self._rates(None))

    def close(self, *, ok: bool = True) -> None:
        """Stop drawing: a finished bar is left at 100 %, a failed one is removed."""
        progress, self._progress = self._progress, None
        if progress is None:
            return
        if ok:
            progress.update(self._task, total=max(self._done, self._total or 0),
                            completed=max(self._done, self._total or 0))
        else:
            progress.remove_task(self._task)
        progress.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(ok=exc_type is None)
