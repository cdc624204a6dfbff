"""``bitswap.serve = "cluster"``: who may fetch blocks (issue 7).

The pure parts: the membership rule (``serve_allowed``), the engine dropping a
peer's wants, the config refusing a standalone node and the reload plan; then
the exchange with a serve filter between real libp2p hosts in one process.
The real-daemon end-to-end test is tests/reliability/test_serve_cluster.py.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from pinfold.blockstore.cid import RAW, cid_key, make_cid
from pinfold.config import Config, ConfigError
from pinfold.config.loader import from_mapping, replace
from pinfold.daemon.p2p.bitswap import FetchTimeout
from pinfold.daemon.p2p.bitswap.message import WantEntry, WantType
from pinfold.daemon.p2p.bitswap.server import ServerEngine
from pinfold.daemon.cluster import serve_allowed
from pinfold.daemon.service import LIVE_KEYS, plan_reload

from tests.support.bitswap import raw_blocks, running_nodes
from tests.support.wait import wait_until_trio

A, B, C = "12D3KooWmemberA", "12D3KooWmemberB", "12D3KooWoutsider"


# ---------------------------------------------------------------------- the rule


def test_serve_all_lets_every_peer_fetch() -> None:
    assert serve_allowed(C, serve="all", trusted=(), blocked=(), known=())
    # "all" is "all": even a blocked peer's wants would be answered (it is disconnected anyway)
    assert serve_allowed(C, serve="all", trusted=(A,), blocked={C}, known=())


def test_serve_cluster_with_trusted_peers_is_exactly_those() -> None:
    trusted = frozenset({A, B})
    assert serve_allowed(A, serve="cluster", trusted=trusted, blocked=(), known=())
    assert serve_allowed(B, serve="cluster", trusted=trusted, blocked=(), known=())
    # a peer the cluster knows (its heartbeat passed) but not trusted: refused
    assert not serve_allowed(C, serve="cluster", trusted=trusted, blocked=(), known={A, B, C})


def test_serve_cluster_without_trusted_peers_is_the_known_members() -> None:
    known = {A, B}
    assert serve_allowed(A, serve="cluster", trusted=(), blocked=(), known=known)
    assert not serve_allowed(C, serve="cluster", trusted=(), blocked=(), known=known)
    assert not serve_allowed(C, serve="cluster", trusted=(), blocked=(), known=())


def test_blocked_peers_are_refused_even_when_trusted_or_known() -> None:
    assert not serve_allowed(A, serve="cluster", trusted={A}, blocked={A}, known={A})
    assert not serve_allowed(A, serve="cluster", trusted=(), blocked={A}, known={A})


# ---------------------------------------------------------------------- the engine


def _cid(i: int):
    return make_cid(i.to_bytes(4, "big"), RAW)


def test_drop_wants_forgets_active_and_waiting_wants_and_keeps_the_counters() -> None:
    eng = ServerEngine()
    have = _cid(1)
    missing = _cid(2)
    eng.receive_wantlist("p", [WantEntry(cid=have, want_type=WantType.BLOCK),
                               WantEntry(cid=missing, want_type=WantType.BLOCK,
                                         send_dont_have=True)])
    eng.record_received("p", 1, 10)
    # serve the first turn: `missing` moves to the waiting list, `have` is answered
    env = eng.next_envelope(lambda c: 5 if c == have else None)
    assert env is not None and env.blocks == (have,)
    eng.receive_wantlist("p", [WantEntry(cid=_cid(3), want_type=WantType.BLOCK)])
    assert sorted(map(cid_key, eng.wanted_by("p"))) == sorted(map(cid_key, [missing, _cid(3)]))
    assert eng.drop_wants("p") == 2
    assert eng.wanted_by("p") == []
    assert not eng.has_work()
    assert eng.next_envelope(lambda c: 5) is None
    assert eng.blocks_added([cid_key(missing)]) == []  # nobody waits for it any more
    led = eng.ledger("p")
    assert led is not None and led.blocks_received == 1 and led.wantlist_size == 0
    assert eng.drop_wants("unknown") == 0
    # the peer may want again later (membership restored) and is served
    assert eng.receive_wantlist("p", [WantEntry(cid=have, want_type=WantType.BLOCK)])
    env = eng.next_envelope(lambda c: 5)
    assert env is not None and env.blocks == (have,)


# ---------------------------------------------------------------------- config and reload


def test_a_standalone_node_cannot_serve_only_its_cluster() -> None:
    with pytest.raises(ConfigError, match=r"^config error: bitswap\.serve: \"cluster\" needs a "
                       r"cluster: set cluster\.name"):
        from_mapping({"bitswap": {"serve": "cluster"}})
    cfg = from_mapping({"bitswap": {"serve": "cluster"}, "cluster": {"name": "private"}})
    assert cfg.bitswap.serve == "cluster"


def test_serve_is_live_on_reload_but_a_standalone_node_refuses_it() -> None:
    assert "bitswap.serve" in LIVE_KEYS
    running = replace(Config(), cluster={"name": "private"})
    plan = plan_reload(running, replace(running, bitswap={"serve": "cluster"}))
    assert [c.key for c in plan.applied] == ["bitswap.serve"]
    assert plan.config.bitswap.serve == "cluster"
    # The file names a cluster (restart-only) and serve = "cluster" (live): the
    # running standalone node would serve nobody, so the reload is refused.
    new = replace(Config(), cluster={"name": "private"}, bitswap={"serve": "cluster"})
    with pytest.raises(ConfigError, match=r"bitswap\.serve"):
        plan_reload(Config(), new)


# ---------------------------------------------------------------------- the exchange


async def test_wants_of_refused_peers_get_nothing_and_are_not_kept() -> None:
    async with running_nodes(3) as (server, member, outsider):
        blocks = raw_blocks(4, 4096, seed=7)
        server.store.add(blocks)
        cids = [c for c, _ in blocks]
        assert server.bitswap.set_serve_filter(lambda peer: peer == member.peer_id) == 0
        await member.host.connect(server.addr)
        await outsider.host.connect(server.addr)
        with trio.fail_after(30):
            got = [c async for c, _ in member.bitswap.fetch_blocks(cids, timeout_s=10)]
        assert len(got) == 4
        with pytest.raises(FetchTimeout):
            async for _ in outsider.bitswap.fetch_blocks(cids, timeout_s=1.5):
                pass
        st = server.bitswap.statistics()
        assert st.refused_wants >= 4  # each CID wanted at least once
        assert st.blocks_sent == 4  # the member's, not one to the outsider
        assert st.peer_wantlist_entries == 0
        assert outsider.store.blocks == {}
        assert outsider.bitswap.statistics().blocks_received == 0
        # The client side is untouched: the filtered server still fetches from the outsider.
        extra = raw_blocks(1, 1000, seed=8)
        outsider.store.add(extra)
        with trio.fail_after(30):
            assert await server.bitswap.get_block(extra[0][0], timeout_s=10) == extra[0][1]


async def test_a_peer_refused_later_loses_the_wants_it_had() -> None:
    async with running_nodes(2) as (server, fetcher):
        allowed = {fetcher.peer_id}
        server.bitswap.set_serve_filter(lambda peer: peer in allowed)
        await fetcher.host.connect(server.addr)
        missing = [c for c, _ in raw_blocks(3, 100, seed=9)]  # nobody has them: wants wait
        async with trio.open_nursery() as nursery:
            async def want() -> None:
                with pytest.raises(FetchTimeout):
                    async for _ in fetcher.bitswap.fetch_blocks(missing, timeout_s=30):
                        pass

            nursery.start_soon(want)
            await wait_until_trio(lambda: server.bitswap.statistics().peer_wantlist_entries == 3,
                             what="the server to hold the fetcher's 3 wants")
            allowed.clear()  # membership revoked (config reload, trust change)
            assert server.bitswap.recheck_serve() == 3
            assert server.bitswap.statistics().peer_wantlist_entries == 0
            # The blocks arriving now do not reach the former member.
            server.store.add(raw_blocks(3, 100, seed=9))
            server.bitswap.blocks_added(missing)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert fetcher.store.blocks == {}
            nursery.cancel_scope.cancel()
        assert server.bitswap.statistics().blocks_sent == 0


async def test_a_serve_filter_that_fails_refuses() -> None:
    async with running_nodes(2) as (server, fetcher):
        server.store.add(raw_blocks(1, 100, seed=10))

        def broken(peer: object) -> bool:
            raise RuntimeError("membership unavailable")

        server.bitswap.set_serve_filter(broken)
        await fetcher.host.connect(server.addr)
        with pytest.raises(FetchTimeout):
            await fetcher.bitswap.get_block(raw_blocks(1, 100, seed=10)[0][0], timeout_s=1.0)
        st = server.bitswap.statistics()
        assert st.refused_wants >= 1 and st.blocks_sent == 0 and st.peer_wantlist_entries == 0


def test_pinfold_daemon_refuses_serve_cluster_on_a_standalone_node(tmp_path) -> None:
    from tests.support.daemon import run_cli

    home = tmp_path / "standalone"
    run_cli(home, "init", "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics", "",
            "--gateway", "")
    cfg = home / "config.toml"
    text = cfg.read_text()
    assert '# serve = "all"' in text
    cfg.write_text(text.replace('# serve = "all"', 'serve = "cluster"'))
    proc = run_cli(home, "daemon", check=False, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert 'config error: bitswap.serve: "cluster" needs a cluster: set cluster.name' in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
