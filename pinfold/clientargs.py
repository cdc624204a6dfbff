"""Argument checks of the Python client (``client.py``) and the RPC parameters
they become: the options ``add`` passes on, replication keywords, and the
``cid``/``timeout``/``progress`` params of a transfer (``cat``, ``get``, ``pin``).

Imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ADD_OPTIONS", "DIR_OPTIONS", "check_options", "replication_params", "transfer_params"]

ADD_OPTIONS = frozenset({"chunk_size", "cid_version", "raw_leaves", "max_links", "name",
                         "rmin", "rmax", "availability", "expire_in"})
"""Options ``add``/``add_stream``/``add_dir`` pass on to the daemon."""

DIR_OPTIONS = frozenset({"dereference"})  # ``add``/``add_info`` of a folder: see ``add_dir``


#: The keyword parameters each add method names in its signature (beside ``opts``).
_KEYWORDS = {
    "add": ("pin", "replicas", "rmin", "rmax", "availability", "wait", "wait_timeout",
            "progress", "dereference"),
    "add_info": ("pin", "replicas", "rmin", "rmax", "availability", "wait", "wait_timeout",
                 "progress", "dereference"),
    "add_stream": ("pin", "progress"),
    "add_dir": ("pin", "dereference", "progress"),
}


def check_options(method: str, opts: dict[str, Any], extra: frozenset[str] = frozenset()) -> None:
    """Raise ``TypeError`` naming every key of ``opts`` outside ``ADD_OPTIONS`` | ``extra``;
    the message lists every keyword ``method`` takes."""
    unknown = sorted(set(opts) - ADD_OPTIONS - extra)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        accepted = sorted(ADD_OPTIONS | extra | set(_KEYWORDS.get(method, ("pin", "progress"))))
        raise TypeError(f"{method}() got unexpected keyword argument{plural} {names} "
                        f"(it takes: {', '.join(accepted)})")


def replication_params(replicas: int | None, rmin: int | None, rmax: int | None,
                 availability: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if replicas is not None:
        out["rmin"] = out["rmax"] = replicas
    if rmin is not None:
        out["rmin"] = rmin
    if rmax is not None:
        out["rmax"] = rmax
    if availability is not None:
        out["availability"] = availability
    return out


def transfer_params(cid: str, timeout: float | None,
                     on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """``{"cid", "timeout"?, "progress"?}`` for ``cat``/``get``/``pin_add``.

    Raises:
        ValueError: ``timeout`` is not a number of seconds > 0.
    """
    params: dict[str, Any] = {"cid": str(cid)}
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        params["timeout"] = float(timeout)
    if on_progress is not None:
        params["progress"] = True
    return params
