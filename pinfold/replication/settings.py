"""The manager's settings: the ``[replication]`` config section plus two driver knobs.

``ManagerConfig`` extends ``pinfold.config.ReplicationConfig`` (the fields and
their defaults live there once) with the settings a config file does not carry
(``startup_wait_s``, ``health_save_interval_s``). Pure: imports config and
replication's health/errors only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from pinfold.config.errors import ConfigError
from pinfold.config.schema import ReplicationConfig
from pinfold.replication.errors import InvalidPin
from pinfold.replication.health import HealthConfig

__all__ = ["ManagerConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerConfig(ReplicationConfig):
    """The manager's settings (``[replication]`` config, DESIGN.md "Replication").

    Every field of ``ReplicationConfig`` (rmin, rmax, heartbeat_interval_s,
    peer_ttl_s, repair_grace_s, p_prior, concurrent_pins, tombstone_horizon_s,
    replan_interval_s, sync_interval_s, retry_min_s, retry_max_s,
    capacity_bytes), plus:

    Attributes:
        startup_wait_s: how long planning waits at start for a first sync with a
            peer, seconds (None = the peer TTL).
        health_save_interval_s: how often the peer stats (p_i) are persisted, seconds.

    Raises:
        InvalidPin: a value is out of range (the message names it).
    """

    startup_wait_s: float | None = None
    health_save_interval_s: float = 30.0

    def __post_init__(self) -> None:
        try:
            ReplicationConfig.__post_init__(self)
        except ConfigError as exc:
            raise InvalidPin(str(exc)) from exc
        for name in ("heartbeat_interval_s", "replan_interval_s", "tombstone_horizon_s",
                     "sync_interval_s", "retry_min_s", "retry_max_s", "health_save_interval_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InvalidPin(f"{name}: must be a number > 0, got {v!r}")
        if type(self.concurrent_pins) is not int:
            raise InvalidPin(f"concurrent_pins: must be >= 1, got {self.concurrent_pins!r}")
        if type(self.capacity_bytes) is not int:
            raise InvalidPin(f"capacity_bytes: must be >= 0, got {self.capacity_bytes!r}")
        self.health_config()  # validates the health settings

    def health_config(self) -> HealthConfig:
        """The health view's settings."""
        return HealthConfig(heartbeat_interval_s=self.heartbeat_interval_s,
                            peer_ttl_s=self.peer_ttl_s, repair_grace_s=self.repair_grace_s,
                            p_prior=self.p_prior)

    @property
    def ttl_s(self) -> float:
        """The suspect threshold, seconds."""
        return self.effective_peer_ttl_s

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> ManagerConfig:
        """Build from a ``pinfold.config.Config`` (its ``replication`` section)."""
        r = config.replication
        values: dict[str, Any] = {f.name: getattr(r, f.name) for f in fields(ReplicationConfig)}
        values.update(overrides)
        return cls(**values)
