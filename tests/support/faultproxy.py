"""A seeded fault switch between pinfold nodes, for the cluster fault campaign.

Every TCP connection between two nodes of a ``tests.support.faultnet.FaultNet`` passes
through this process (it runs in the switch's network namespace). It knows each
connection's link ``(i, j)`` from the port dialled (the destination node) and
the source address (the dialling node), and applies that link's current faults
to every chunk it forwards, in both directions:

* ``delay_s`` / ``jitter_s``: each chunk is delivered ``delay +- jitter`` seconds
  after it arrived, in order (as a long or variable path would);
* ``loss``: probability that a chunk is held for a retransmission timeout
  (0.2-1 s), which is what a lost segment costs a TCP connection;
* ``rate_bps``: bytes per second the link carries (a slow link or slow reader:
  the sender meets back-pressure);
* ``duplicate`` / ``reorder``: probability that a chunk is sent twice, or swapped
  with the next one. TCP hides such packets from applications, so here they
  model a broken middlebox: the Noise layer must detect them and the nodes must
  drop the connection and redial;
* ``reset_per_s``: rate at which a connection is cut with a TCP RST;
* ``partition``: ``"blackhole"`` (bytes are held, as TCP keeps retransmitting
  them, and flow again when the partition heals) or ``"reset"`` (existing
  connections are cut and new ones refused).

The faults of a link can change at any time and apply to open connections at
once. Randomness comes from ``random.Random(seed)`` per connection (the seed
plus a connection counter), so a run's fault schedule repeats.

Control: one JSON object per line on stdin, one JSON reply per line on stdout::

    {"op": "set", "links": [[0, 1], [0, 2]], "faults": {"delay_s": 0.05}}
    {"op": "set", "links": "all", "faults": {}}      # clears
    {"op": "stats"}                                   # counters of injected faults

Run as ``python -m tests.support.faultproxy CONFIG_JSON`` where the config is
``{"listen_ip": ..., "nodes": [[ip, port, proxy_port], ...], "seed": N}``.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

CHUNK = 64 * 1024
FAULT_KEYS = {"delay_s", "jitter_s", "loss", "rate_bps", "duplicate", "reorder",
              "reset_per_s", "partition"}


def link_of(i: int, j: int) -> tuple[int, int]:
    return (i, j) if i < j else (j, i)


@dataclass(eq=False)
class Conn:
    link: tuple[int, int]
    scope: trio.CancelScope
    streams: list[trio.SocketStream] = field(default_factory=list)
    healed: trio.Event = field(default_factory=trio.Event)


class Switch:
    def __init__(self, config: dict[str, Any]) -> None:
        self.listen_ip: str = config["listen_ip"]
        self.nodes: list[tuple[str, int, int]] = [tuple(n) for n in config["nodes"]]
        self.by_ip = {ip: i for i, (ip, _, _) in enumerate(self.nodes)}
        self.seed: int = int(config.get("seed", 0))
        self.faults: dict[tuple[int, int], dict[str, Any]] = {}
        self.conns: set[Conn] = set()
        self.counters: Counter[str] = Counter()
        self.changed = trio.Event()  # set (and renewed) whenever faults change
        self._n = 0

    # ------------------------------------------------------------------ control

    def set_faults(self, links: Any, faults: dict[str, Any]) -> None:
        unknown = set(faults) - FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        if faults.get("partition") not in (None, "blackhole", "reset"):
            raise ValueError(f"partition must be 'blackhole' or 'reset', got {faults['partition']!r}")
        n = len(self.nodes)
        if links == "all":
            targets = [(i, j) for i in range(n) for j in range(i + 1, n)]
        else:
            targets = [link_of(int(a), int(b)) for a, b in links]
        for link in targets:
            if faults:
                self.faults[link] = dict(faults)
            else:
                self.faults.pop(link, None)
            if faults.get("partition") == "reset":
                for c in list(self.conns):
                    if c.link == link:
                        self.counters["partition_resets"] += 1
                        self._reset(c)
        self.changed.set()
        self.changed = trio.Event()

    def stats(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "connections": len(self.conns),
                "faulty_links": {f"{a}-{b}": f for (a, b), f in sorted(self.faults.items())}}

    async def control(self) -> None:
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        buf = b""
        while True:
            data = await stdin.receive_some(65536)
            if not data:
                raise SystemExit(0)  # the harness went away: stop
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    req = json.loads(line)
                    if req["op"] == "set":
                        self.set_faults(req["links"], req.get("faults") or {})
                        reply: dict[str, Any] = {"ok": True}
                    elif req["op"] == "stats":
                        reply = {"ok": True, **self.stats()}
                    else:
                        reply = {"ok": False, "error": f"unknown op {req['op']!r}"}
                except Exception as exc:  # noqa: BLE001 - reported to the harness
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                sys.stdout.write(json.dumps(reply) + "\n")
                sys.stdout.flush()

    # ------------------------------------------------------------------ forwarding

    def _reset(self, conn: Conn) -> None:
        for s in conn.streams:
            try:
                s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        conn.scope.cancel()

    async def _wait_passable(self, link: tuple[int, int]) -> dict[str, Any]:
        """The link's faults once it is not blackholed (held bytes wait here)."""
        held = False
        while True:
            f = self.faults.get(link, {})
            if f.get("partition") != "blackhole":
                return f
            if not held:
                self.counters["blackhole_holds"] += 1
                held = True
            await self.changed.wait()

    async def _pump(self, conn: Conn, src: trio.SocketStream, dst: trio.SocketStream,
                    rng: random.Random) -> None:
        send, recv = trio.open_memory_channel[tuple[float, bytes]](64)

        async def reader() -> None:
            async with send:
                last_due = 0.0
                while True:
                    data = await src.receive_some(CHUNK)
                    if not data:
                        return
                    f = await self._wait_passable(conn.link)
                    now = trio.current_time()
                    extra = 0.0
                    if f.get("delay_s") or f.get("jitter_s"):
                        extra = max(0.0, f.get("delay_s", 0.0)
                                    + rng.uniform(-1, 1) * f.get("jitter_s", 0.0))
                        self.counters["chunks_delayed"] += 1
                    if f.get("loss") and rng.random() < f["loss"]:
                        extra += rng.uniform(0.2, 1.0)
                        self.counters["chunks_lost_retransmitted"] += 1
                    last_due = max(last_due, now + extra)
                    await send.send((last_due, data))

        async def writer() -> None:
            async with recv:
                pending: bytes | None = None
                async for due, data in recv:
                    wait = due - trio.current_time()
                    if wait > 0:
                        await trio.sleep(wait)
                    f = await self._wait_passable(conn.link)
                    if pending is None and f.get("reorder") and rng.random() < f["reorder"]:
                        pending = data  # goes out after the next chunk
                        self.counters["chunks_reordered"] += 1
                        continue
                    out = [data]
                    if pending is not None:
                        out.append(pending)
                        pending = None
                    if f.get("duplicate") and rng.random() < f["duplicate"]:
                        out.append(data)
                        self.counters["chunks_duplicated"] += 1
                    for piece in out:
                        await dst.send_all(piece)
                        rate = f.get("rate_bps")
                        if rate:
                            self.counters["bytes_rate_limited"] += len(piece)
                            await trio.sleep(len(piece) / rate)
                if pending is not None:
                    await dst.send_all(pending)
            await dst.send_eof()

        async def guarded(fn: Any) -> None:
            try:
                await fn()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                conn.scope.cancel()  # one side broke: the whole connection goes

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, reader)
            nursery.start_soon(guarded, writer)

    async def _resetter(self, conn: Conn, rng: random.Random) -> None:
        while True:
            rate = self.faults.get(conn.link, {}).get("reset_per_s", 0.0)
            if not rate:
                await self.changed.wait()
                continue
            with trio.move_on_after(rng.expovariate(rate)):
                await self.changed.wait()
                continue
            self.counters["connection_resets"] += 1
            self._reset(conn)
            return

    async def handle(self, client: trio.SocketStream, dst_index: int) -> None:
        peer_ip = client.socket.getpeername()[0]
        src_index = self.by_ip.get(peer_ip)
        if src_index is None:
            self.counters["unknown_sources"] += 1
            await client.aclose()
            return
        link = link_of(src_index, dst_index)
        if self.faults.get(link, {}).get("partition") == "reset":
            self.counters["connections_refused_partition"] += 1
            client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await client.aclose()
            return
        self._n += 1
        rng = random.Random(self.seed * 1_000_003 + self._n)
        ip, port, _ = self.nodes[dst_index]
        conn = Conn(link, trio.CancelScope())
        self.counters["connections"] += 1
        with conn.scope:
            try:
                server = await trio.open_tcp_stream(ip, port)
            except OSError:
                self.counters["upstream_refused"] += 1
                await client.aclose()
                return
            conn.streams = [client, server]
            self.conns.add(conn)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._resetter, conn, rng)
                    async with trio.open_nursery() as pumps:
                        pumps.start_soon(self._pump, conn, client, server, rng)
                        pumps.start_soon(self._pump, conn, server, client,
                                         random.Random(rng.random()))
                    nursery.cancel_scope.cancel()
            finally:
                self.conns.discard(conn)
        for s in (client, *conn.streams[1:]):
            with trio.move_on_after(1):
                await s.aclose()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for index, (_, _, proxy_port) in enumerate(self.nodes):
                listeners = await trio.open_tcp_listeners(proxy_port, host=self.listen_ip)

                async def serve(stream: trio.SocketStream, index: int = index) -> None:
                    await self.handle(stream, index)

                nursery.start_soon(trio.serve_listeners, serve, listeners)
            sys.stdout.write(json.dumps({"ok": True, "ready": True}) + "\n")
            sys.stdout.flush()
            await self.control()


def main() -> None:
    config = json.loads(sys.argv[1])
    try:
        trio.run(Switch(config).run)
    except SystemExit:
        pass


if __name__ == "__main__":
    main()
