"""The libp2p host on 127.0.0.1: connect, peers, ping, security, bootstrap, limits."""

from __future__ import annotations

import contextlib
import functools
import logging
import socket

import multiaddr
import pytest
import trio
from libp2p import new_host as libp2p_new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from pinfold.daemon.p2p.host import DialError, Host, HostConfig, HostError

from tests.support.bitswap import LOOPBACK, new_host
from tests.support.wait import wait_until_trio


async def test_two_hosts_connect_list_ping_and_disconnect(nursery):
    a, b = new_host(), new_host()
    await nursery.start(a.run)
    await nursery.start(b.run)
    events = a.subscribe()
    (addr,) = a.addrs()
    assert addr.startswith("/ip4/127.0.0.1/tcp/") and addr.endswith(f"/p2p/{a.peer_id}")

    assert await b.connect(addr) == a.peer_id
    await wait_until_trio(lambda: a.is_connected(b.peer_id), what="inbound connection")
    ev = await events.receive()
    assert (ev.peer_id, ev.connected) == (b.peer_id, True)
    (status,) = b.peers()
    assert status.peer_id == a.peer_id and status.addrs and status.direction == "outbound"
    assert await b.connect(addr) == a.peer_id  # already connected: no second dial
    assert b.statistics().dials == 1

    rtt = await b.ping(a.peer_id)
    assert 0 < rtt < 5

    assert await b.disconnect(a.peer_id) is True
    await wait_until_trio(lambda: not a.is_connected(b.peer_id), what="disconnect seen by a")
    ev = await events.receive()
    assert (ev.peer_id, ev.connected) == (b.peer_id, False)
    assert b.peers() == [] and await b.disconnect(str(a.peer_id)) is False


def _insecure_host():
    kp = create_new_key_pair()
    return libp2p_new_host(
        key_pair=kp,
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        connection_config=ConnectionConfig(max_connections_per_peer=1),
        listen_addrs=[multiaddr.Multiaddr(LOOPBACK[0])],
    )


async def test_plaintext_peers_are_refused_both_ways(nursery):
    ours = new_host()
    await nursery.start(ours.run)
    insecure = _insecure_host()
    async with insecure.run([multiaddr.Multiaddr(LOOPBACK[0])]):
        # it dials us: we offer only Noise, so the upgrade fails
        with pytest.raises(Exception):  # noqa: B017 - py-libp2p raises several types
            with trio.fail_after(10):
                await insecure.connect(info_from_p2p_addr(multiaddr.Multiaddr(ours.addrs()[0])))
        assert not ours.is_connected(insecure.get_id())
        # we dial it: it offers only plaintext
        target = f"{insecure.get_addrs()[0]}"
        if "/p2p/" not in target:
            target += f"/p2p/{insecure.get_id()}"
        with pytest.raises(DialError, match="failed|timed out"):
            await ours.connect(target)
        assert ours.peers() == []


async def test_bad_addresses_name_the_problem(nursery):
    h = new_host()
    await nursery.start(h.run)
    with pytest.raises(HostError, match="invalid multiaddr"):
        await h.connect("not-a-multiaddr")
    with pytest.raises(HostError, match="no /p2p/"):
        await h.connect("/ip4/127.0.0.1/tcp/1")
    with pytest.raises(DialError, match="our own peer ID"):
        await h.connect(h.addrs()[0])
    with pytest.raises(HostError, match="invalid peer ID"):
        await h.disconnect("xyz")
    with pytest.raises(DialError):
        await h.connect(f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{new_host().peer_id}")
    assert h.statistics().dial_failures == 1


def test_config_refuses_non_tcp_listen_and_bootstrap_without_peer_id():
    with pytest.raises(ValueError, match="not a TCP multiaddr"):
        HostConfig(listen=("/ip4/127.0.0.1/udp/4001/quic-v1",))
    with pytest.raises(HostError, match="no /p2p/"):
        HostConfig(bootstrap=("/ip4/127.0.0.1/tcp/4001",))
    with pytest.raises(ValueError, match="max_connections"):
        HostConfig(max_connections=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_bootstrap_peer_is_dialled_retried_and_reconnected(nursery):
    port = _free_port()
    boot_key = create_new_key_pair()
    boot = Host(boot_key, HostConfig(listen=(f"/ip4/127.0.0.1/tcp/{port}",)))
    boot_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{boot.peer_id}"
    node = Host(
        create_new_key_pair(),
        HostConfig(listen=LOOPBACK, bootstrap=(boot_addr,), bootstrap_backoff_min_s=0.05,
                   bootstrap_backoff_max_s=0.2, bootstrap_check_interval_s=0.05),
    )
    await nursery.start(node.run)
    # nothing listens yet: dials fail and are retried with backoff
    await wait_until_trio(lambda: node.statistics().dial_failures >= 2, what="failed bootstrap dials")
    await nursery.start(boot.run)
    await wait_until_trio(lambda: node.is_connected(boot.peer_id), what="bootstrap connection")
    assert node.statistics().bootstrap_connected == 1
    # the bootstrap peer drops us: we reconnect
    await boot.disconnect(node.peer_id)
    await wait_until_trio(lambda: node.statistics().connections_closed >= 1, what="disconnect")
    await wait_until_trio(lambda: node.is_connected(boot.peer_id), what="reconnection")


async def test_connection_limit_refuses_extra_peers(nursery):
    limited = Host(create_new_key_pair(), HostConfig(listen=LOOPBACK, max_connections=1))
    first, second = new_host(), new_host()
    for h in (limited, first, second):
        await nursery.start(h.run)
    await first.connect(limited.addrs()[0])
    await wait_until_trio(lambda: limited.is_connected(first.peer_id), what="first connection")
    try:
        await second.connect(limited.addrs()[0])
    except DialError:
        pass
    await wait_until_trio(lambda: not limited.is_connected(second.peer_id), what="second refused")
    assert limited.statistics().peers == 1
    with pytest.raises(DialError):
        await limited.connect(second.addrs()[0])  # outbound dials obey the limit too


def test_libp2p_logs_reach_the_root_logger(caplog):
    caplog.set_level(logging.WARNING)
    new_host()
    logging.getLogger("libp2p.test").warning("hello from libp2p")
    assert "hello from libp2p" in caplog.text
    assert logging.getLogger("libp2p").propagate is True


async def test_connect_dials_the_address_given_not_a_stale_one(nursery):
    """py-libp2p dials only the first TCP address it knows for a peer; one learned
    earlier (identify, an old announcement) that is unreachable must not hide the
    address asked for (the cluster fault campaign found nodes that never reconnected)."""
    a, b = new_host(), new_host()
    await nursery.start(a.run)
    await nursery.start(b.run)
    (addr,) = a.addrs()
    # A closed port on loopback: what a peer's unreachable listen address looks like.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    stale = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{dead_port}")
    b.libp2p.get_peerstore().add_addrs(a.peer_id, [stale], 3600)
    assert await b.connect(addr) == a.peer_id
    assert b.is_connected(a.peer_id)


async def test_announce_replaces_the_advertised_addresses(nursery):
    announce = "/ip4/10.1.2.3/tcp/7100"
    a = Host(create_new_key_pair(), HostConfig(listen=LOOPBACK, announce=(announce,)))
    b = new_host()
    await nursery.start(a.run)
    await nursery.start(b.run)
    (listen,) = a.addrs()
    assert listen.startswith("/ip4/127.0.0.1/tcp/")  # the listen address is still ours
    assert a.announced() == [f"{announce}/p2p/{a.peer_id}"]
    await b.connect(listen)
    # identify tells b the announced address only, never the listen address
    await wait_until_trio(lambda: any("10.1.2.3" in str(x)
                                 for x in b.libp2p.get_peerstore().addrs(a.peer_id)),
                     what="identify to deliver a's addresses")
    with pytest.raises(HostError, match="not-a-multiaddr"):
        HostConfig(listen=LOOPBACK, announce=("not-a-multiaddr",))


async def test_a_cancelled_disconnect_still_closes_the_connection(nursery):
    """Regression (live hostile Bitswap campaign): py-libp2p marks a connection closed
    before its close's first await; a close cancelled after that left it listed
    forever, its new streams never negotiated. Cancelled at any point, the disconnect
    now completes: both ends see it and the peers can connect again."""
    a, b = new_host(), new_host()
    await nursery.start(a.run)
    await nursery.start(b.run)
    events = a.subscribe()
    for checkpoints in (0, 1, 2, 3, 5, 8, 13, 21, 34):
        await b.connect(a.addrs()[0])
        await wait_until_trio(lambda: a.is_connected(b.peer_id), what="connected")
        assert (await events.receive()).connected

        async with trio.open_nursery() as inner:
            inner.start_soon(a.disconnect, b.peer_id)
            for _ in range(checkpoints):
                await trio.lowlevel.checkpoint()
            inner.cancel_scope.cancel()
        await wait_until_trio(lambda: not a.is_connected(b.peer_id) and not b.is_connected(a.peer_id),
                         what=f"disconnect cancelled after {checkpoints} checkpoints seen by both")
        ev = await events.receive()
        assert (ev.peer_id, ev.connected) == (b.peer_id, False)
        assert a.peers() == [] and b.peers() == []


async def test_a_disconnect_from_a_peer_that_stopped_reading_ends_within_close_timeout(nursery):
    """Closing writes goodbyes (GO_AWAY, stream resets); to a peer whose socket is not
    read they block once the TCP buffers are full. After ``close_timeout_s`` the socket
    is closed and the connection dropped instead."""
    a, b = new_host(close_timeout_s=1.0), new_host()
    await nursery.start(a.run)
    await nursery.start(b.run)
    events = a.subscribe()
    a_port = int(a.addrs()[0].split("/tcp/")[1].split("/")[0])
    stalled = trio.Event()  # set: the relay stops reading what ``a`` sends

    async def relay(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", a_port)

        async def pump(src: trio.SocketStream, dst: trio.SocketStream, stalls: bool) -> None:
            with trio.move_on_after(30):
                while data := await src.receive_some(65536):
                    await dst.send_all(data)
                    if stalls and stalled.is_set():
                        await trio.sleep_forever()

        async with client, upstream, trio.open_nursery() as n:
            n.start_soon(pump, client, upstream, False)
            n.start_soon(pump, upstream, client, True)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
    relay_port = listeners[0].socket.getsockname()[1]
    await b.connect(f"/ip4/127.0.0.1/tcp/{relay_port}/p2p/{a.peer_id}")
    await wait_until_trio(lambda: a.is_connected(b.peer_id), what="connected through the relay")
    assert (await events.receive()).connected

    async def sink(stream) -> None:  # b takes the data in (Yamux buffers it) and keeps it
        await trio.sleep_forever()

    b.set_stream_handler("/test/sink/1", sink)
    # 48 x 256 KiB Yamux windows: far more than the TCP buffers hold
    streams = [await a.new_stream(b.peer_id, ["/test/sink/1"]) for _ in range(48)]
    stalled.set()
    blocked = trio.Event()

    async def write_until_blocked(stream) -> None:
        with contextlib.suppress(Exception):  # the stream dies with the dropped connection
            with trio.move_on_after(0.5) as scope:
                while True:
                    await stream.write(b"\0" * 65536)
                    scope.deadline = trio.current_time() + 0.5
            blocked.set()  # no write completed for 0.5 s: the socket is full

    async with trio.open_nursery() as writers:
        for stream in streams:
            writers.start_soon(write_until_blocked, stream)
        await blocked.wait()
        start = trio.current_time()
        assert await a.disconnect(b.peer_id) is True
        assert trio.current_time() - start < 3
        assert not a.is_connected(b.peer_id) and a.peers() == []
        ev = await events.receive()
        assert (ev.peer_id, ev.connected) == (b.peer_id, False)
        writers.cancel_scope.cancel()


async def test_stream_events_still_reach_a_notifee_that_acts_on_them(nursery):
    """The swarm's stream events skip the notifees that do nothing with them
    (swarm_limits.quiet_stream_notifications); one that acts still gets both."""
    from libp2p.abc import INotifee

    seen: list[str] = []

    class Counting(INotifee):
        async def opened_stream(self, network, stream) -> None:
            seen.append("opened")

        async def closed_stream(self, network, stream) -> None:
            seen.append("closed")

        async def connected(self, network, conn) -> None: ...

        async def disconnected(self, network, conn) -> None: ...

        async def listen(self, network, multiaddr) -> None: ...

        async def listen_close(self, network, multiaddr) -> None: ...

    a, b = Host(create_new_key_pair(), HostConfig(listen=LOOPBACK)), \
        Host(create_new_key_pair(), HostConfig(listen=LOOPBACK))
    for h in (a, b):
        await nursery.start(h.run)

    async def echo(stream) -> None:
        await stream.write(await stream.read(5))
        await stream.close()

    b.set_stream_handler("/pinfold-test/echo/1", echo)
    b.libp2p.get_network().register_notifee(Counting())
    await a.connect(b.addrs()[0])
    with trio.fail_after(30):
        stream = await a.new_stream(b.peer_id, ["/pinfold-test/echo/1"])
        await stream.write(b"hello")
        assert await stream.read(5) == b"hello"
        await stream.close()
        await wait_until_trio(lambda: seen.count("closed") >= 1, what="the closed event")
    assert seen.count("opened") >= 1
