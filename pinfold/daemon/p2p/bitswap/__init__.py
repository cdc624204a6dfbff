"""pinfold's Bitswap 1.2.0 (answering 1.1.0 and 1.0.0).

Layers (STYLE.md 1): ``message`` (wire codec), ``server`` and ``client``
(sans-IO decision cores), ``exchange`` (the trio driver on libp2p streams).
"""

from pinfold.daemon.p2p.bitswap.wants import ClientConfig, WantManager
from pinfold.daemon.p2p.bitswap.errors import (
    BitswapError,
    BitswapNotRunning,
    BlockUnavailable,
    FetchTimeout,
    MalformedMessage,
    MessageTooLarge,
    RemoteProtocolError,
    TooManyBadBlocks,
    WantlistTooLarge,
)
from pinfold.daemon.p2p.bitswap.exchange import Bitswap, ExchangeConfig, BitswapStats, FetchStats
from pinfold.daemon.p2p.bitswap.message import PROTOCOL_1_0_0, PROTOCOL_1_1_0, PROTOCOL_1_2_0, PROTOCOLS
from pinfold.daemon.p2p.bitswap.server import LedgerStat, ServerConfig, ServerEngine

__all__ = [
    "PROTOCOLS",
    "PROTOCOL_1_0_0",
    "PROTOCOL_1_1_0",
    "PROTOCOL_1_2_0",
    "Bitswap",
    "ExchangeConfig",
    "BitswapError",
    "BitswapNotRunning",
    "BitswapStats",
    "ClientConfig",
    "FetchStats",
    "BlockUnavailable",
    "FetchTimeout",
    "LedgerStat",
    "MalformedMessage",
    "MessageTooLarge",
    "RemoteProtocolError",
    "ServerConfig",
    "ServerEngine",
    "TooManyBadBlocks",
    "WantManager",
    "WantlistTooLarge",
]
