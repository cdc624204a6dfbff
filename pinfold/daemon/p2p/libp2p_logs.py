"""py-libp2p's log records back in the standard logging tree.

py-libp2p 0.8.1 cuts its loggers off from the logging tree on import
(``setup_logging`` in ``libp2p.utils.logging``); ``route_libp2p_logs`` puts them back
under the root logger, so the daemon's logging configuration (level, format,
destination) applies to them too. ``Host`` calls it when built.
"""

from __future__ import annotations

import logging

__all__ = ["route_libp2p_logs"]


def route_libp2p_logs(level: int = logging.WARNING) -> None:
    """Send py-libp2p's log records up the standard logging tree.

    py-libp2p's ``setup_logging`` (run on import) clears the ``libp2p`` logger's
    handlers and sets ``propagate = False``; this undoes that so records reach
    the handlers configured on the root logger.

    Args:
        level: the level for the ``libp2p`` logger (it is very chatty below WARNING).
    """
    root = logging.getLogger("libp2p")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.propagate = True
    root.setLevel(level)
    for name, obj in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(obj, logging.Logger):
            for handler in list(obj.handlers):
                obj.removeHandler(handler)
            obj.propagate = True
    # A refused dial is routine (a peer restarting, a bootstrap retry) and the
    # caller reports it; py-libp2p's TCP transport logs each one at ERROR.
    logging.getLogger("libp2p.transport.tcp.tcp").setLevel(logging.CRITICAL)
