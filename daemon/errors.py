"""How the CLI turns exceptions into one line on stderr and an exit code.

Exit codes: 1 an error (the daemon's or a local one), 2 bad usage,
3 no daemon running on the socket.
"""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_NO_DAEMON = 3


def leaf(exc: BaseException) -> BaseException:
    """The one real error inside nested exception groups (trio nurseries wrap errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def message_for(exc: BaseException) -> str:
    """One line describing ``exc`` for a user (no traceback)."""
    exc = leaf(exc)
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(message_for(e) for e in exc.exceptions)
    if isinstance(exc, FileNotFoundError) and exc.filename:
        reason = exc.strerror if exc.strerror and exc.strerror != "No such file or directory" \
            else "no such file or directory"
        return f"{exc.filename}: {reason}"
    if isinstance(exc, PermissionError) and exc.filename:
        return f"{exc.filename}: permission denied"
    if isinstance(exc, IsADirectoryError) and exc.filename:
        return f"{exc.filename}: is a directory"
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")


def exit_code_for(exc: BaseException) -> int:
    """The exit code for ``exc``: 3 when the daemon is not running, else 1."""
    exc = leaf(exc)
    if getattr(exc, "code", None) == "daemon_not_running":
        return EXIT_NO_DAEMON
    return EXIT_ERROR
