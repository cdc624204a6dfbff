"""A hostile peer for the cluster reliability campaign (``tests/reliability/test_hostile_cluster.py``).

Run as ``python -m tests.support.cluster_fuzzer`` with one JSON argument::

    {"mode": "fuzz" | "capture" | "replay", "targets": [multiaddr with /p2p/, ...],
     "cluster": name, "key_seed": hex of 32 bytes or null, "n": inputs, "frames": sync
     frames, "seed": int, "message": hex (replay)}

It joins the cluster's gossipsub topic with its own libp2p identity (``key_seed``
makes it a fixed one, e.g. a member listed in ``cluster.trusted_peers``: a
compromised insider), waits until every target's subscription is known, and:

* ``fuzz``: publishes ``n`` hostile gossip messages, round robin over
  - garbage payloads (random and mutated envelopes), signed at the gossipsub level;
  - valid envelopes around mutated bodies (heartbeats, pinset and state deltas);
  - valid, correctly signed messages of its own (untrusted: a new pin, a tombstone
    of a member's pin, a heartbeat impersonating a member) - only as an outsider;
  - raw replays of the members' messages it captured (same from/seqno/signature);
  - forgeries: captured messages with the data, author, key or signature changed,
    and messages with garbage author, key, signature or seqno fields;
  - oversized payloads (last: a daemon may drop the stream that carried one);
  then opens ``/pinfold/sync/1`` streams to every target and sends ``frames``
  malformed frames (hostile bodies, bad length prefixes, oversized lengths,
  truncated frames), opening a new stream whenever one is reset. Sync sessions the
  daemons open to it are answered with garbage. As an insider it sends no body that
  the decoders accept and that would be a legitimate write (such as a well-formed
  pin), and no sync push that decodes: only hostile input.
* ``capture``: prints ``{"ready": true}``, reads a CID from stdin, and prints the
  first captured gossip message (a member's signed ``pins`` delta) naming that CID,
  serialised, as ``{"message": hex}``.
* ``replay``: writes ``message`` raw (unchanged) to every target's pubsub stream,
  then one signed message of its own after it (a barrier: once a target counts it
  as dropped, the replay before it on the same stream was processed); prints
  ``{"sent": true}`` and stays connected until a line arrives on stdin.

It prints one JSON line of counts at the end.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections import Counter
from typing import Any

import msgpack
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited
from pinfold.daemon.cluster_transport import SYNC_PROTOCOL, LibP2PTransport, _signed_bytes
from pinfold.daemon.p2p.host import Host, HostConfig
from pinfold.replication.errors import PinsetDecodeError
from pinfold.replication.messages import (
    KIND_HEARTBEAT,
    KIND_PINS,
    KIND_STATES,
    ClusterBeat,
    PushRequest,
    decode_beat,
    decode_request,
    encode_beat,
    encode_request,
    encode_response,
)
from pinfold.replication.pinset import Entry, decode_entries, encode_entries
from pinfold.replication.states import StatesDelta, decode_delta, encode_delta
from pinfold.replication.sync import (
    EntriesRequest,
    SummaryRequest,
    SummaryResponse,
)
from pinfold.replication.types import Heartbeat, Pin, PinState, pin_key

from tests.support.fuzzing import random_hostile

MAX_GOSSIP = 1024 * 1024  # py-libp2p's inbound RPC limit


class Fuzzer:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        seed = cfg.get("key_seed")
        key = create_new_key_pair(bytes.fromhex(seed) if seed else None)
        self.host = Host(key, HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
        self.transport = LibP2PTransport(self.host, key, cfg["cluster"], heartbeat_interval_s=0.5)
        self.transport._read_gossip = self._capture  # type: ignore[method-assign]
        self.host.set_stream_handler(SYNC_PROTOCOL, self._serve_garbage)
        self.me = self.host.peer_id.to_base58()
        self.insider = bool(seed)
        self.rng = random.Random(cfg.get("seed", 0))
        self.captured: list[rpc_pb2.Message] = []
        self.counts: Counter[str] = Counter()
        self.ps = self.transport._pubsub
        self.targets: list[ID] = []
        self._got = trio.Event()

    # ------------------------------------------------------------------ plumbing

    async def _capture(self, sub: Any) -> None:
        while True:
            msg = await sub.get()
            if ID(msg.from_id) != self.host.peer_id and len(self.captured) < 500:
                self.captured.append(msg)
                self._got.set()

    async def _serve_garbage(self, stream: Any) -> None:
        """A daemon syncing with us gets hostile responses."""
        try:
            with trio.fail_after(10):
                for _ in range(20):
                    await read_varint_prefixed_bytes_limited(stream, 4 << 20)
                    body = self._garbage_response()
                    await stream.write(encode_uvarint(len(body)) + body)
                    self.counts["sync responses (garbage)"] += 1
        except Exception:  # noqa: BLE001, S110 - the daemon gave up on us: expected
            pass
        finally:
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001, S110
                    pass

    def _garbage_response(self) -> bytes:
        if self.rng.random() < 0.3:  # well formed, but not an answer to the request
            return encode_response(SummaryResponse(level=3, nodes=((7, 1, 1),)))
        corpus = [encode_response(SummaryResponse(level=0, nodes=((0, 5, 1),))),
                  encode_request(SummaryRequest(tree_bits=16, level=0, indices=(0,)))]
        while True:
            body = random_hostile(self.rng, corpus)
            try:
                from pinfold.replication.messages import decode_response

                decode_response(body)
            except PinsetDecodeError:
                return body

    async def connect(self) -> None:
        for addr in self.cfg["targets"]:
            self.targets.append(await self.host.connect(addr))
        with trio.fail_after(30):
            while not all(t in self.ps.peer_topics.get(self.transport.topic, set()) and
                          t in self.ps.peers for t in self.targets):
                await trio.sleep(0.05)

    async def reconnect(self) -> None:
        """Dial again any target that cut us off (counted), and wait for its pubsub stream."""
        for addr, t in zip(self.cfg["targets"], self.targets, strict=True):
            if not self.host.is_connected(t) or t not in self.ps.peers:
                self.counts["reconnects"] += 1
                with trio.move_on_after(10):
                    try:
                        await self.host.connect(addr)
                        while t not in self.ps.peers:
                            await trio.sleep(0.05)
                    except Exception:  # noqa: BLE001 - still refusing us: go on
                        self.counts["reconnects failed"] += 1

    async def raw(self, msg: rpc_pb2.Message) -> None:
        """Write one pubsub message, as is, to every target's pubsub stream."""
        rpc = rpc_pb2.RPC(publish=[msg])
        for t in self.targets:
            stream = self.ps.peers.get(t)
            try:
                if stream is not None and await self.ps.write_msg(stream, rpc):
                    continue
            except Exception:  # noqa: BLE001 - the daemon cut us off
                self.counts["raw writes failed"] += 1
                continue
            self.counts["raw writes failed"] += 1

    # ------------------------------------------------------------------ gossip inputs

    def _envelope(self, kind: str, body: bytes) -> bytes:
        key = self.host.key_pair.private_key
        return msgpack.packb({"v": 1, "k": kind, "b": body,
                              "s": key.sign(_signed_bytes(self.cfg["cluster"], kind, body))},
                             use_bin_type=True)

    def _bodies(self) -> dict[str, list[bytes]]:
        victim = self.targets[0].to_base58()
        ts = (int(time.time() * 1000) + 1000) << 16
        cid = bytes([1, 0x55, 0x12, 0x20]) + hashlib.sha256(self.me.encode()).digest()
        return {
            KIND_PINS: [encode_entries([Entry(cid=cid, ts=ts, peer_id=self.me,
                                              pin=Pin(cid=cid, rmin=1, rmax=5))]),
                        encode_entries([Entry(cid=cid, ts=ts, peer_id=victim, pin=None)])],
            KIND_HEARTBEAT: [encode_beat(ClusterBeat(
                heartbeat=Heartbeat(peer_id=who, incarnation=1, seq=10**6, capacity_bytes=1 << 60,
                                    free_bytes=1 << 60, addresses=tuple(self.host.addrs())),
                pinset_digest=0, pinset_count=0, states_epoch=1, states_version=1))
                for who in (victim, self.me)],
            KIND_STATES: [encode_delta(StatesDelta(owner=who, epoch=1, base=0, version=1,
                                                   changes=((cid, PinState.PINNED),)))
                          for who in (victim, self.me)],
        }

    def _is_write(self, kind: str, body: bytes) -> bool:
        """True when an insider's body would be a legitimate write (not sent)."""
        try:
            if kind == KIND_PINS:
                return bool(decode_entries(body))
            if kind == KIND_HEARTBEAT:
                return decode_beat(body).heartbeat.peer_id == self.me
            if kind == KIND_STATES:
                return decode_delta(body).owner == self.me
        except (PinsetDecodeError, ValueError):
            return False
        return False

    async def fuzz_gossip(self, n: int) -> None:
        bodies = self._bodies()
        kinds = sorted(bodies)
        envelopes = [self._envelope(k, b) for k in kinds for b in bodies[k]]
        c = self.counts
        oversized = max(2, n // 100)
        for i in range(n - oversized):
            choice = i % 6
            if choice == 0:  # garbage payload
                await self.transport._pubsub.publish(self.transport.topic,
                                                     random_hostile(self.rng, envelopes))
                c["garbage payloads"] += 1
            elif choice in (1, 2):  # a valid envelope around a mutated body
                kind = kinds[i % len(kinds)]
                body = random_hostile(self.rng, bodies[kind])
                if self.insider and self._is_write(kind, body):
                    c["skipped (a valid write)"] += 1
                    continue
                await self.transport.publish(kind, body)
                c["mutated bodies"] += 1
            elif choice == 3 and not self.insider:  # valid, signed, untrusted
                kind = kinds[i % len(kinds)]
                await self.transport.publish(kind, self.rng.choice(bodies[kind]))
                c["valid untrusted messages"] += 1
            elif choice == 4 and self.captured:  # a raw replay
                await self.raw(self.rng.choice(self.captured))
                c["replays"] += 1
            else:
                await self.raw(self._forgery())
                c["forgeries"] += 1
            if i % 20 == 19:
                await trio.sleep(0.01)  # pace: let the streams drain
                await self.reconnect()
        for _ in range(oversized):
            size = self.rng.choice([MAX_GOSSIP - 200, MAX_GOSSIP + 10, 2 * MAX_GOSSIP])
            try:
                await self.transport.publish(KIND_PINS, self.rng.randbytes(size))
                c["oversized payloads"] += 1
            except Exception:  # noqa: BLE001 - refused locally
                c["oversized refused locally"] += 1

    def _signed(self, data: bytes) -> rpc_pb2.Message:
        """A correctly signed gossipsub message of our own (as ``Pubsub.publish`` makes)."""
        msg = rpc_pb2.Message(data=data, topicIDs=[self.transport.topic],
                              from_id=self.host.peer_id.to_bytes(),
                              seqno=time.time_ns().to_bytes(8, "big"))
        msg.signature = self.host.key_pair.private_key.sign(
            PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        msg.key = self.host.key_pair.public_key.serialize()
        return msg

    def _forgery(self) -> rpc_pb2.Message:
        rng = self.rng
        topic = self.transport.topic
        if self.captured and rng.random() < 0.6:
            msg = rpc_pb2.Message()
            msg.CopyFrom(rng.choice(self.captured))
            what = rng.randint(0, 3)
            if what == 0:
                msg.data = random_hostile(rng, [msg.data])
            elif what == 1:
                msg.signature = rng.randbytes(len(msg.signature))
            elif what == 2:  # our key and signature on a member's author field
                msg.data = self._envelope(KIND_PINS, b"\x80")
                msg.seqno = rng.randbytes(8)
                msg.key = self.host.key_pair.public_key.serialize()
            else:
                msg.seqno = rng.randbytes(8)  # a "new" message: its signature no longer fits
            return msg
        msg = rpc_pb2.Message(data=rng.randbytes(rng.randint(0, 200)), topicIDs=[topic],
                              from_id=rng.randbytes(rng.choice([0, 1, 5, 38, 39])),
                              seqno=rng.randbytes(rng.choice([0, 8, 30])))
        if rng.random() < 0.5:
            msg.key = rng.randbytes(rng.choice([0, 36, 100]))
            msg.signature = rng.randbytes(rng.choice([0, 64]))
        return msg

    # ------------------------------------------------------------------ sync inputs

    async def fuzz_sync(self, frames: int) -> None:
        corpus = [encode_request(SummaryRequest(tree_bits=16, level=0, indices=(0,))),
                  encode_request(EntriesRequest(tree_bits=16, ranges=((0, 65536),))),
                  encode_request(PushRequest(entries=()))]
        c = self.counts
        sent = 0
        target = 0
        while sent < frames:
            pid = self.targets[target % len(self.targets)]
            target += 1
            try:
                with trio.fail_after(10):
                    stream = await self.host.new_stream(pid, [SYNC_PROTOCOL])
            except Exception:  # noqa: BLE001 - refused (an outsider) or reset
                c["sync streams refused"] += 1
                sent += 1
                continue
            c["sync streams"] += 1
            try:
                with trio.fail_after(10):
                    for _ in range(self.rng.randint(1, 8)):
                        if sent >= frames:
                            break
                        sent += 1
                        frame, answered = self._frame(corpus)
                        await stream.write(frame)
                        c["sync frames"] += 1
                        if not answered:
                            break  # the daemon waits for more: reset the stream below
                        await read_varint_prefixed_bytes_limited(stream, 4 << 20)
                        c["sync answers"] += 1
            except Exception:  # noqa: BLE001 - the daemon reset the stream: expected
                c["sync streams reset"] += 1
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001, S110
                    pass

    def _frame(self, corpus: list[bytes]) -> tuple[bytes, bool]:
        """A hostile sync frame, and whether the daemon can act on it at once (answer
        or reset the stream): it waits for the rest of a frame that never comes (an
        overlong varint, a truncated body), so our side resets the stream after
        such a frame instead of waiting out the 10 s deadline for an answer."""
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            return b"\xff" * 10, False  # an overlong varint
        if r < 0.1:
            return encode_uvarint((4 << 20) + 1) + b"x" * 100, True  # more than MAX_FRAME
        if r < 0.15:
            return encode_uvarint(1000) + b"\x80" * 10, False  # truncated
        while True:
            body = random_hostile(rng, corpus)
            if self.insider:
                try:
                    req = decode_request(body)
                    if isinstance(req, PushRequest) and req.entries:
                        continue  # a legitimate write
                except PinsetDecodeError:
                    pass
            return encode_uvarint(len(body)) + body, True

    # ------------------------------------------------------------------ modes

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peer_id": self.me}
        async with trio.open_nursery() as nursery:
            await nursery.start(self.host.run)
            await nursery.start(self.transport.run)
            await self.connect()
            mode = self.cfg["mode"]
            if mode == "fuzz":
                with trio.move_on_after(5):  # a few members' messages to replay and forge
                    while len(self.captured) < 10:
                        await trio.sleep(0.05)
                await self.fuzz_gossip(self.cfg["n"])
                await self.fuzz_sync(self.cfg["frames"])
            elif mode == "capture":
                print(json.dumps({"ready": True}), flush=True)
                cid = (await trio.to_thread.run_sync(sys.stdin.readline)).strip()
                out["message"] = (await self._find(pin_key(cid))).SerializeToString().hex()
            elif mode == "replay":
                msg = rpc_pb2.Message()
                msg.ParseFromString(bytes.fromhex(self.cfg["message"]))
                await self.raw(msg)
                await self.raw(self._signed(b"barrier"))
                print(json.dumps({"sent": True, "counts": dict(self.counts)}), flush=True)
                await trio.to_thread.run_sync(sys.stdin.readline)  # stay until told
            nursery.cancel_scope.cancel()
        out["captured"] = len(self.captured)
        out["counts"] = dict(self.counts)
        return out

    async def _find(self, cid: bytes) -> rpc_pb2.Message:
        with trio.fail_after(30):
            while True:
                for msg in self.captured:
                    try:
                        env = msgpack.unpackb(msg.data, raw=False)
                        if env["k"] == KIND_PINS and any(
                                e.cid == cid and e.pin is not None
                                for e in decode_entries(env["b"])):
                            return msg
                    except Exception:  # noqa: BLE001, S112 - not one of ours
                        continue
                self._got = trio.Event()
                await self._got.wait()


if __name__ == "__main__":
    result = trio.run(Fuzzer(json.loads(sys.argv[1])).run)
    print(json.dumps(result), flush=True)
