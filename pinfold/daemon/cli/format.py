"""How the CLI turns exceptions into one line on stderr and an exit code.

Every error gets a short snake_case ``code``: the daemon's RPC error code
(``not_found``, ``store_full``, ...; ``rpc.wire``), an exception's ``code``
attribute, or one of the local codes below for errors raised in the CLI
process (a missing input file, a bad option). ``EXIT_CODES`` maps codes to
exit statuses, the one table the CLI and README.md ("Exit codes") follow:

====  =========================================================================
0     success
1     any other error (the daemon's or a local one)
2     bad usage: an unknown option, a missing argument, a bad value
3     no daemon is running on the socket
4     not found: the CID, block or pin is not on the node (or not pinned), or
      a name, version or tag does not exist
5     timeout: the daemon, or the peers it asked for blocks, did not answer in time
6     store full: ``blockstore.max_size_bytes`` is reached
7     refused: the daemon refused the request or connection (permission, a
      key not allowed to publish under a name, limits, stopping, another
      daemon already running on the home), a pin
      request it cannot honour (a direct pin over a recursive one, more copies
      than members, an unreachable availability), a pin every holder failed,
      or ``pin rm`` of the root of a live version of a name (without --force)
130   interrupted (Ctrl-C)
====  =========================================================================
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_NOT_FOUND = 4
EXIT_TIMEOUT = 5
EXIT_STORE_FULL = 6
EXIT_REFUSED = 7
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[str, int] = {
    "usage": EXIT_USAGE,
    "daemon_not_running": EXIT_NO_DAEMON,
    "not_found": EXIT_NOT_FOUND,
    "path_not_found": EXIT_NOT_FOUND,
    "not_pinned": EXIT_NOT_FOUND,
    "name_not_found": EXIT_NOT_FOUND,
    "timeout": EXIT_TIMEOUT,
    "fetch_timeout": EXIT_TIMEOUT,
    "handshake_timeout": EXIT_TIMEOUT,
    "wait_timeout": EXIT_TIMEOUT,
    "store_full": EXIT_STORE_FULL,
    "permission_denied": EXIT_REFUSED,
    "not_allowed": EXIT_REFUSED,
    "too_many_connections": EXIT_REFUSED,
    "too_many_requests": EXIT_REFUSED,
    "shutting_down": EXIT_REFUSED,
    "unsupported_version": EXIT_REFUSED,
    "already_running": EXIT_REFUSED,
    "store_locked": EXIT_REFUSED,
    "invalid_pin": EXIT_REFUSED,
    "pin_error": EXIT_REFUSED,
    "pin_failed": EXIT_REFUSED,
    "pin_in_use": EXIT_REFUSED,
    "interrupted": EXIT_INTERRUPTED,
}
"""Error code -> exit status; codes not listed exit with ``EXIT_ERROR``."""

_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")

# Local errors (raised in the CLI process) by exception type; the first match wins.
_LOCAL_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (KeyboardInterrupt, "interrupted"),
    (FileNotFoundError, "file_not_found"),
    (FileExistsError, "file_exists"),
    (IsADirectoryError, "is_a_directory"),
    (NotADirectoryError, "not_a_directory"),
    (PermissionError, "file_permission_denied"),
    (TimeoutError, "timeout"),
    (OSError, "os_error"),
    (ValueError, "invalid_input"),
    (TypeError, "invalid_input"),
)


def leaf(exc: BaseException) -> BaseException:
    """The one real error inside nested exception groups (trio nurseries wrap errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def leaves(exc: BaseException) -> list[BaseException]:
    """Every error inside ``exc``'s nested exception groups, in order (``[exc]`` if none)."""
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in leaves(sub)]
    return [exc]


def code_for(exc: BaseException) -> str:
    """The snake_case code of ``exc``: its ``code`` attribute, else one for its type."""
    first = leaves(exc)[0]
    code = getattr(first, "code", None)
    if isinstance(code, str) and _CODE_RE.match(code):
        return code
    import trio

    if isinstance(first, trio.TooSlowError):
        return "timeout"
    for kind, local in _LOCAL_CODES:
        if isinstance(first, kind):
            return local
    return "error"


def message_for(exc: BaseException) -> str:
    """One line describing ``exc`` for a user (no traceback, no exception group)."""
    found = leaves(exc)
    if len(found) > 1:
        return "; ".join(dict.fromkeys(message_for(e) for e in found))
    exc = found[0]
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
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc)
    if not text:
        code = code_for(exc)
        text = "timed out" if EXIT_CODES.get(code) == EXIT_TIMEOUT else code.replace("_", " ")
    return text.replace("\n", " ")


def exit_code_for(exc: BaseException) -> int:
    """The exit status for ``exc`` (``EXIT_CODES`` by its code, else ``EXIT_ERROR``)."""
    return EXIT_CODES.get(code_for(exc), EXIT_ERROR)
