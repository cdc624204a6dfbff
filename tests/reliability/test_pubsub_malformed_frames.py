"""A malformed pubsub frame from a peer costs that peer's stream, never the daemon.

A real daemon in a cluster (any peer may join the topic) gets, from a libp2p
host of the test on a real ``/meshsub`` stream: frames whose bytes are not a
protobuf ``RPC`` (py-libp2p's ``ParseFromString`` raises ``DecodeError``), a
length prefix far above the 1 MiB inbound limit, and a truncated frame. After
each the daemon is still running, answers RPC, counts the stream in
``pinfold_cluster_malformed_pubsub_streams_total``, and its gossipsub still
serves a fresh peer (it announces its topic subscription to it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12
from libp2p.utils.varint import encode_uvarint
from pinfold.daemon.cluster_transport import LibP2PTransport
from pinfold.daemon.p2p.host import Host, HostConfig

from tests.support.cluster import configure, peer_id, replication
from tests.support.daemon import DaemonProcess, metric
from tests.support.wait import wait_until

CLUSTER = "garbled"

#: Frames that are not a protobuf RPC: a field 1 claiming more bytes than follow,
#: an invalid wire type, and a length prefix of 3464915014880 bytes.
GARBAGE = [
    encode_uvarint(6) + b"\x0a\xff\xff\xff\xff\x0f",
    encode_uvarint(4) + b"\x0f\x0f\x0f\x0f",
    encode_uvarint(3_464_915_014_880) + b"\x00" * 64,
]


@pytest.fixture
def daemon(tmp_path: Path):
    d = DaemonProcess(tmp_path, "g0")
    d.init()
    configure(d, cluster=CLUSTER, trusted=[], bootstrap=[], replication=replication())
    d.start()
    try:
        yield d
    finally:
        try:
            d.stop()
        finally:
            d.kill9()


def _addr(d: DaemonProcess) -> str:
    with d.client() as c:
        addr = next(a for a in c.id()["addresses"] if "/ip4/127.0.0.1/" in a)
    return addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id(d)}"


async def _send_garbage(addr: str, frame: bytes) -> None:
    host = Host(create_new_key_pair(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        pid = await host.connect(addr)
        with trio.fail_after(30):
            stream = await host.new_stream(pid, [str(PROTOCOL_ID_V12)])
            await stream.write(frame)
            # The daemon resets the stream (or closes the connection): reads end.
            try:
                while await stream.read(65536):
                    pass
            except Exception:  # noqa: BLE001, S110 - a reset is the expected answer
                pass
        nursery.cancel_scope.cancel()


async def _gossip_serves(addr: str, daemon_id: str) -> None:
    """A fresh cluster peer sees the daemon's subscription to the cluster topic."""
    key = create_new_key_pair()
    host = Host(key, HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
    transport = LibP2PTransport(host, key, CLUSTER, heartbeat_interval_s=0.5)
    target = ID.from_base58(daemon_id)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        await nursery.start(transport.run)
        await host.connect(addr)
        with trio.fail_after(60):
            while target not in transport._pubsub.peer_topics.get(transport.topic, set()):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def _up(d: DaemonProcess) -> None:
    assert d.proc is not None and d.proc.poll() is None, f"daemon exited:\n{d.log()}"
    with d.client() as c:
        assert b"".join(c.cat(c.add(b"still serving", pin=False))) == b"still serving"


def test_malformed_pubsub_frames_cost_the_stream_not_the_daemon(daemon: DaemonProcess) -> None:
    addr = _addr(daemon)
    for i, frame in enumerate(GARBAGE, start=1):
        trio.run(_send_garbage, addr, frame)
        wait_until(lambda i=i: metric(daemon, "pinfold_cluster_malformed_pubsub_streams_total")
                   >= i, timeout_s=30, what=f"malformed pubsub stream {i} counted")
        _up(daemon)
    trio.run(_gossip_serves, addr, peer_id(daemon))
    _up(daemon)
