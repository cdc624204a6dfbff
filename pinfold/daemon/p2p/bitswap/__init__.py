"""pinfold's Bitswap 1.2.0 (answering 1.1.0 and 1.0.0).

Layers (STYLE.md 1): ``message`` (wire codec, with ``prefix``: block CID
prefixes); ``server``, ``wants`` (with its vocabulary ``client_types``),
``schedule`` and ``ledger`` (sans-IO decision cores); ``config`` and ``stats``
(the exchange's settings and counters); ``exchange`` (the trio driver) with its parts
``outbound`` (our stream to each peer), ``inbound`` (theirs to us),
``serving`` (the engine's answers, the serve filter) and ``fetch`` (fetch
sessions).
"""

from pinfold.daemon.p2p.bitswap.client_types import ClientConfig
from pinfold.daemon.p2p.bitswap.schedule import HolderScheduler, PeerPerf
from pinfold.daemon.p2p.bitswap.wants import WantManager
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
from pinfold.daemon.p2p.bitswap.config import ExchangeConfig
from pinfold.daemon.p2p.bitswap.exchange import Bitswap
from pinfold.daemon.p2p.bitswap.stats import BitswapStats, FetchStats
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
    "HolderScheduler",
    "LedgerStat",
    "MalformedMessage",
    "MessageTooLarge",
    "PeerPerf",
    "RemoteProtocolError",
    "ServerConfig",
    "ServerEngine",
    "TooManyBadBlocks",
    "WantManager",
    "WantlistTooLarge",
]
