"""pinfold.config: the typed configuration, TOML loading and validation."""

from pinfold.config.errors import ConfigError
from pinfold.config.loader import from_mapping, load, render, replace
from pinfold.config.schema import (
    BitswapConfig,
    BlockstoreConfig,
    ClusterConfig,
    Config,
    GatewayConfig,
    ImportConfig,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    ReplicationConfig,
    RpcConfig,
)

__all__ = [
    "BitswapConfig", "BlockstoreConfig", "ClusterConfig", "Config", "ConfigError",
    "GatewayConfig", "ImportConfig", "LogConfig", "MetricsConfig", "NodeConfig",
    "ReplicationConfig", "RpcConfig", "from_mapping", "load", "render", "replace",
]
