"""Which connected cluster peers a node reconnects for silence (pinfold/daemon/cluster.py)."""

from __future__ import annotations

from pinfold.daemon.cluster import silent_peers


def test_a_connected_peer_silent_for_the_period_is_reconnected_with_backoff() -> None:
    next_at: dict[str, tuple[float, float]] = {}

    def recs(now: float) -> dict[str, float]:  # peer -> when its last heartbeat came
        return {"quiet": 0.0, "talks": now - 5.0, "gone": 0.0}

    connected = ["quiet", "talks"]  # "gone" is not connected: the dial loop's job
    assert silent_peers(recs(100), connected, 100.0, 60.0, next_at, 1000.0) == [("quiet", 100.0)]
    # not again within the period, then with the backoff doubled
    assert silent_peers(recs(130), connected, 130.0, 60.0, next_at, 1030.0) == []
    assert silent_peers(recs(160), connected, 160.0, 60.0, next_at, 1060.0) == [("quiet", 160.0)]
    assert silent_peers(recs(200), connected, 200.0, 60.0, next_at, 1100.0) == []
    assert next_at["quiet"] == (1180.0, 240.0)
    # heard again: the backoff starts over
    assert silent_peers({"quiet": 199.0}, connected, 200.0, 60.0, next_at, 1100.0) == []
    assert "quiet" not in next_at
    # a peer silent for less than the period is left alone
    assert silent_peers({"quiet": 150.0}, connected, 200.0, 60.0, {}, 0.0) == []
