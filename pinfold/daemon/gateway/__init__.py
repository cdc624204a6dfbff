"""The read-only HTTP gateway (ipfs/specs ``http-gateways/path-gateway.md`` and
``trustless-gateway.md``), served by the daemon on ``gateway.listen``.

Modules, one job each: ``server`` (h11 under trio: connections, limits,
streaming), ``routes`` (which response a request gets), ``trustless`` (raw
blocks and CARs), ``files`` (files, ranges, directories), ``listing`` (the
HTML directory page), ``content`` (blocks with a timeout, paths walked),
``mime`` (content types), ``ranges`` (``Range`` and ``entity-bytes``),
``http`` (the request/response value types and error bodies).

The gateway reads blocks only through the narrow ``ContentSource`` the node
hands it, and paths only through the core resolver (``unixfs.paths``).
"""

from pinfold.daemon.gateway.content import ContentSource
from pinfold.daemon.gateway.server import Gateway

__all__ = ["ContentSource", "Gateway"]
