"""An untrusted peer for the cluster tests: joins a cluster's gossip topic and tries to
change things it is not allowed to.

Run as ``python -m tests.support.cluster_adversary MULTIADDR CLUSTER PINNED_CID VICTIM_PEER_ID``.
It connects to the daemon at MULTIADDR with a fresh identity, waits until the
daemon's subscription to the cluster topic is known, then publishes, correctly
signed with its own key:

1. a pinset delta adding a new pin (``new_cid`` in the output);
2. a tombstone for ``PINNED_CID`` (an existing cluster pin);
3. a heartbeat that claims to be ``VICTIM_PEER_ID`` (a trusted member), and one
   of its own with a huge capacity (so it would win allocations);
4. a state delta claiming it holds ``PINNED_CID``;

and finally tries to open a ``/pinfold/sync/1`` session to read the pinset.
It prints one JSON line: ``{"peer_id", "new_cid", "published", "sync_refused"}``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from pinfold.daemon.cluster_transport import LibP2PTransport
from pinfold.daemon.p2p.host import Host, HostConfig
from pinfold.replication.messages import (
    KIND_HEARTBEAT,
    KIND_PINS,
    KIND_STATES,
    ClusterBeat,
    encode_beat,
    encode_request,
)
from pinfold.replication.pinset import Entry, encode_entries
from pinfold.replication.states import StatesDelta, encode_delta
from pinfold.replication.sync import SummaryRequest
from pinfold.replication.transport import TransportError
from pinfold.replication.types import Heartbeat, Pin, PinState, cid_text, pin_key


async def main(target: str, cluster: str, pinned: str, victim: str) -> dict:
    host = Host(create_new_key_pair(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
    transport = LibP2PTransport(host, host.key_pair, cluster, heartbeat_interval_s=0.5)
    me = host.peer_id.to_base58()
    out: dict = {"peer_id": me, "published": 0}
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        await nursery.start(transport.run)
        daemon = await host.connect(target)
        ps = transport._pubsub
        with trio.fail_after(20):
            while daemon not in ps.peer_topics.get(transport.topic, set()):
                await trio.sleep(0.05)
        ts = (int(time.time() * 1000) + 1000) << 16  # a fresh, later timestamp
        new_cid = bytes([1, 0x55, 0x12, 0x20]) + hashlib.sha256(me.encode()).digest()
        out["new_cid"] = cid_text(new_cid)
        target_key = pin_key(pinned)
        bodies = [
            (KIND_PINS, encode_entries([Entry(cid=new_cid, ts=ts, peer_id=me,
                                              pin=Pin(cid=new_cid, rmin=1, rmax=5))])),
            (KIND_PINS, encode_entries([Entry(cid=target_key, ts=ts + 1, peer_id=victim,
                                              pin=None)])),
            (KIND_HEARTBEAT, encode_beat(ClusterBeat(
                heartbeat=Heartbeat(peer_id=victim, incarnation=1, seq=10**6,
                                    capacity_bytes=1 << 60, free_bytes=1 << 60),
                pinset_digest=0, pinset_count=0, states_epoch=1, states_version=1))),
            (KIND_HEARTBEAT, encode_beat(ClusterBeat(
                heartbeat=Heartbeat(peer_id=me, incarnation=1, seq=1, capacity_bytes=1 << 60,
                                    free_bytes=1 << 60, addresses=tuple(host.addrs())),
                pinset_digest=0, pinset_count=0, states_epoch=1, states_version=1))),
            (KIND_STATES, encode_delta(StatesDelta(owner=me, epoch=1, base=0, version=1,
                                                   reset=False,
                                                   changes=((target_key, PinState.PINNED),)))),
        ]
        for _ in range(10):  # repeat: gossip is best effort, and a loaded node's mesh forms late
            for kind, body in bodies:
                await transport.publish(kind, body)
                out["published"] += 1
            await trio.sleep(0.3)
        try:
            session = await transport.open_session(daemon.to_base58())
            await session.ask(encode_request(SummaryRequest(tree_bits=16, level=0,
                                                            indices=(0,))))
            out["sync_refused"] = False
        except TransportError:
            out["sync_refused"] = True
        nursery.cancel_scope.cancel()
    return out


if __name__ == "__main__":
    result = trio.run(main, *sys.argv[1:5])
    print(json.dumps(result), flush=True)
