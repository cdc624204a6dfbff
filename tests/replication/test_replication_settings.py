"""The manager's settings (pinfold/replication/settings.py): derived from ``[replication]``."""

from __future__ import annotations

import dataclasses

import pytest
from pinfold.config import ReplicationConfig, from_mapping
from pinfold.replication.errors import InvalidPin
from pinfold.replication.settings import ManagerConfig


def test_every_replication_key_is_a_manager_setting_with_its_default() -> None:
    mine = {f.name: f.default for f in dataclasses.fields(ManagerConfig)}
    for f in dataclasses.fields(ReplicationConfig):
        assert mine[f.name] == f.default, f.name
    assert set(mine) - {f.name for f in dataclasses.fields(ReplicationConfig)} == {
        "startup_wait_s", "health_save_interval_s"}


def test_from_config_takes_the_section_and_overrides() -> None:
    cfg = from_mapping({"replication": {"rmin": 3, "rmax": 5, "retry_max_s": 60.0,
                                        "capacity_bytes": 1 << 30}})
    m = ManagerConfig.from_config(cfg, startup_wait_s=0.5)
    assert (m.rmin, m.rmax, m.retry_max_s, m.capacity_bytes) == (3, 5, 60.0, 1 << 30)
    assert m.startup_wait_s == 0.5
    assert m.ttl_s == 2 * m.heartbeat_interval_s


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rmin": 0}, "replication.rmin"),
    ({"rmin": 3, "rmax": 2}, "replication.rmax"),
    ({"retry_min_s": 10.0, "retry_max_s": 5.0}, "retry_max_s"),
    ({"sync_interval_s": float("inf")}, "sync_interval_s"),
    ({"health_save_interval_s": 0}, "health_save_interval_s"),
    ({"concurrent_pins": 2.0}, "concurrent_pins"),
    ({"p_prior": 1.0}, "p_prior"),
])
def test_bad_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidPin, match=message):
        ManagerConfig(**kwargs)
