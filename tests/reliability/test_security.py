"""Security campaign (issue 7, item 4), the parts that need no cluster.

RPC socket access: the socket is 0660 in a 0700 home, and the daemon also
checks every connection's peer credentials (``SO_PEERCRED``/``SO_PEERGROUPS``)
against root, its own user and the socket's group (``rpc.allowed_group``).
The tests run as root and connect as ``nobody`` (uid 65534) from a child
process started under ``setpriv`` (util-linux).

libp2p: a dialer offering only ``/plaintext/2.0.0``, ``/secio/1.0.0`` or
``/tls/1.0.0`` is refused during multistream-select (a raw TCP client reads
the ``na``), and a real py-libp2p host configured with plaintext only cannot
connect; peers that send unsolicited blocks store nothing and are cut off;
floods of wants, streams and connections from one peer are bounded while a
good peer keeps fetching.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import multiaddr
import pytest
import trio
import trio.lowlevel
from libp2p import new_host as libp2p_new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from pinfold.blockstore.cid import RAW, make_cid
from pinfold.daemon.p2p.bitswap.message import (
    PROTOCOL_1_2_0,
    PROTOCOLS,
    Block,
    CidPrefix,
    Message,
    WantEntry,
    encode_framed,
)
from pinfold.daemon.p2p.host import Host, HostConfig

from tests.support.bitswap import Peer, fetch_all, new_host, tcp_target
from tests.support.daemon import DaemonProcess, metric
from tests.support.campaign import (
    Content,
    KiB,
    MiB,
    RssSampler,
    configured,
    live_fingerprint,
    make_content,
    open_fds,
    pick,
    record,
    rss_bytes,
    seed,
)

NOBODY = 65534

CONNECT_AS = r"""
import json, sys
from pinfold.daemon.rpc.connection import RpcConnection, RpcError
try:
    with RpcConnection(sys.argv[1]) as conn:
        out = {"ok": True, "peer_id": conn.call("id", {})["peer_id"]}
except RpcError as exc:
    out = {"ok": False, "code": exc.code, "message": str(exc)}
print(json.dumps(out))
"""


def connect_as(socket_path: Path, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    """Connect to the daemon's socket from a process of another user; its verdict as a dict."""
    switch = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
              f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"]
    proc = subprocess.run([*switch, sys.executable, "-c", CONNECT_AS, str(socket_path)],
                          check=False, capture_output=True, timeout=60, cwd="/",
                          env={**os.environ, "HOME": "/"})
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="switching users needs root and setpriv")


@pytest.fixture
def open_dir(tmp_path: Path) -> Path:
    """A directory other users may traverse (the home itself is 0700)."""
    d = Path("/tmp") / f"pinfold-sec-{os.getpid()}-{tmp_path.name[-12:]}"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@needs_root
def test_rpc_socket_refuses_other_users(tmp_path: Path, open_dir: Path) -> None:
    refused: dict[str, int] = {}
    sock = open_dir / "rpc.sock"
    d = configured(DaemonProcess(tmp_path, "sec"), rpc={"socket": str(sock),
                                                        "allowed_group": "4242"})
    with d:
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 4242
        # root and the daemon's own user
        with d.client() as c:
            assert c.id()["peer_id"]
        # a member of the allowed group
        member = connect_as(sock, NOBODY, NOBODY, [4242])
        assert member["ok"], member
        # anyone else: the file mode stops it (EACCES) ...
        other = connect_as(sock, NOBODY, NOBODY, [])
        assert other == {"ok": False, "code": "permission_denied",
                         "message": other["message"]} and "0660" in other["message"], other
        refused["file mode 0660"] = 1
        # ... and if someone widens the mode by hand, the credential check still does
        os.chmod(sock, 0o666)
        other = connect_as(sock, NOBODY, NOBODY, [])
        assert not other["ok"] and other["code"] == "permission_denied", other
        assert "is not allowed to use this daemon" in other["message"], other
        refused["peer credentials (SO_PEERCRED)"] = 1
        # the daemon serves on
        with d.client() as c:
            assert c.id()["peer_id"]
        assert "RPC connection refused: user 65534" in d.log()
    record("security", "RPC socket", refused=refused, allowed=["root", "member of group 4242"])


@needs_root
def test_default_home_socket_is_closed_to_other_users(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, "home") as d:
        sock = d.home / "rpc.sock"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        assert stat.S_IMODE(os.stat(d.home).st_mode) == 0o700
        res = connect_as(sock, NOBODY, NOBODY, [])
        assert not res["ok"] and res["code"] == "permission_denied", res


def test_unknown_allowed_group_is_a_clear_start_error(tmp_path: Path) -> None:
    from tests.support.daemon import run_cli

    d = configured(DaemonProcess(tmp_path, "badgroup"),
                   rpc={"allowed_group": "no-such-group-pinfold"})
    proc = run_cli(d.home, "daemon", check=False, timeout=60)
    err = proc.stderr.decode().strip()
    assert proc.returncode != 0
    assert err.splitlines() == [err] and "rpc.allowed_group" in err and "no such group" in err


def test_peer_credentials_of_a_socket_pair() -> None:
    from pinfold.daemon.rpc.server import peer_credentials

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        creds = peer_credentials(a)
    assert creds.pid == os.getpid() and creds.uid == os.geteuid()
    assert os.getegid() in creds.groups


# ====================================================================== libp2p


MULTISTREAM = b"/multistream/1.0.0\n"


def _ms(line: bytes) -> bytes:
    return bytes([len(line)]) + line  # every line here is < 128 bytes: a one-byte uvarint


def _ms_read(sock: socket.socket, n: int) -> list[bytes]:
    """Read ``n`` multistream-select messages (uvarint length + line)."""
    buf = b""
    out: list[bytes] = []
    while len(out) < n:
        while not buf or len(buf) < 1 + buf[0]:
            chunk = sock.recv(4096)
            if not chunk:
                return out
            buf += chunk
        out.append(buf[1:1 + buf[0]])
        buf = buf[1 + buf[0]:]
    return out


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, Content]]:
    root = tmp_path_factory.mktemp("victim")
    d = configured(DaemonProcess(root, "victim"), bitswap={"max_wantlist": 2000})
    d.start()
    content = make_content("served", random.Random(seed()), sizes=(64 * MiB,),
                           chunk_sizes=(256 * KiB,))
    with d.client() as c:
        assert c.add(content.data, pin=True, chunk_size=256 * KiB) == content.root_text
    try:
        yield d, content
    finally:
        d.stop()
        d.kill9()


def test_insecure_and_downgraded_security_offers_are_refused(victim) -> None:
    daemon, _ = victim
    host, port, _ = tcp_target(daemon)
    refused: dict[str, int] = {}
    for proto in ("/plaintext/2.0.0", "/plaintext/1.0.0", "/secio/1.0.0", "/tls/1.0.0",
                  "/noise/../plaintext", "/mplex/6.7.0"):
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(_ms(MULTISTREAM) + _ms(proto.encode() + b"\n"))
            header, answer = _ms_read(s, 2)
            assert header == MULTISTREAM
            assert answer == b"na\n", (proto, answer)
            refused[proto] = refused.get(proto, 0) + 1
    with socket.create_connection((host, port), timeout=10) as s:  # the one we do speak
        s.sendall(_ms(MULTISTREAM) + _ms(b"/noise\n"))
        assert _ms_read(s, 2) == [MULTISTREAM, b"/noise\n"]
    record("security", "libp2p security negotiation", refused=refused, accepted=["/noise"])


async def test_a_plaintext_only_dialer_cannot_connect(victim, nursery: trio.Nursery) -> None:
    daemon, _ = victim
    _, _, addr = tcp_target(daemon)
    kp = create_new_key_pair()
    insecure = libp2p_new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)},
                               muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
                               listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")])
    async with insecure.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with pytest.raises(Exception):  # noqa: B017 - py-libp2p raises several types
            with trio.fail_after(20):
                await insecure.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
    with daemon.client() as c:
        assert str(insecure.get_id()) not in {p["peer_id"] for p in c.peers()}
    record("security", "plaintext-only py-libp2p dialer", refused=1)


def _victim_id(addr: str) -> Any:
    return ID.from_base58(addr.rsplit("/p2p/", 1)[1])


async def test_unsolicited_blocks_store_nothing_and_cut_the_sender_off(
        victim, nursery: trio.Nursery) -> None:
    daemon, _ = victim
    _, _, addr = tcp_target(daemon)
    with daemon.client() as c:
        before = live_fingerprint(c)
    hostile = new_host()
    await nursery.start(hostile.run)
    await hostile.connect(addr)
    sent = 0
    with contextlib.suppress(Exception):  # the victim hangs up on us part way
        for i in range(6):
            blocks = tuple(Block(prefix=CidPrefix.of(make_cid(d, RAW)), data=d)
                           for d in (random.Random(i * 7 + j).randbytes(50_000) for j in range(2)))
            stream = await hostile.new_stream(_victim_id(addr), [PROTOCOL_1_2_0])
            await stream.write(encode_framed(Message(blocks=blocks)))
            await stream.close()
            sent += len(blocks)
    with trio.fail_after(20):
        while hostile.is_connected(_victim_id(addr)):
            await trio.sleep(0.02)
    with daemon.client() as c:
        assert live_fingerprint(c) == before  # not one byte stored
    record("security", "unsolicited blocks", blocks_sent=sent, blocks_stored=0,
           refused={"bad_blocks (peer cut off)": 1})


async def test_a_wantlist_flood_is_bounded_and_good_peers_are_served(
        victim, nursery: trio.Nursery) -> None:
    daemon, content = victim
    _, _, addr = tcp_target(daemon)
    rss_before = rss_bytes(daemon.pid)
    hostile = new_host()
    await nursery.start(hostile.run)
    await hostile.connect(addr)
    rng = random.Random(5)
    wants = 0
    with contextlib.suppress(Exception):
        for _ in range(pick(15, 40)):  # x 1000 wants of blocks nobody has, 7-20x the limit
            entries = tuple(WantEntry(cid=make_cid(rng.randbytes(8), RAW), send_dont_have=True)
                            for _ in range(1000))
            stream = await hostile.new_stream(_victim_id(addr), [PROTOCOL_1_2_0])
            await stream.write(encode_framed(Message(wantlist=entries)))
            await stream.close()
            wants += len(entries)
    good = Peer()
    await nursery.start(good.run)
    await good.host.connect(addr)
    seconds = await fetch_all(good, content)
    held = metric(daemon, "pinfold_bitswap_wantlist_entries", side="peers")
    assert held <= 2000 + 1000, held  # the per-peer bound (one message of slack)
    growth = rss_bytes(daemon.pid) - rss_before
    record("security", "wantlist flood", wants_sent=wants, wants_held_max=int(held),
           rss_growth_bytes=growth, good_peer_fetch_s=round(seconds, 2))
    assert growth < 128 * MiB, growth
    good.scope.cancel()


async def test_bytes_in_flight_to_a_peer_that_never_reads_are_bounded(
        victim, nursery: trio.Nursery) -> None:
    daemon, content = victim
    _, _, addr = tcp_target(daemon)
    stalled = []

    async def never_read(stream: Any) -> None:
        stalled.append(stream)
        await trio.sleep_forever()

    hostile = new_host()
    await nursery.start(hostile.run)
    for proto in PROTOCOLS:
        hostile.set_stream_handler(proto, never_read)
    await hostile.connect(addr)
    with RssSampler(daemon.pid, 0.1) as rss:
        base = rss_bytes(daemon.pid)
        for _ in range(4):  # want the whole 64 MiB four times over (full wantlists)
            entries = tuple(WantEntry(cid=c) for c, _ in content.blocks)
            stream = await hostile.new_stream(_victim_id(addr), [PROTOCOL_1_2_0])
            await stream.write(encode_framed(Message(wantlist=entries, full=True)))
            await stream.close()
        good = Peer()
        await nursery.start(good.run)
        await good.host.connect(addr)
        seconds = await fetch_all(good, content)
    growth = rss.peak - base
    record("security", "bytes in flight to a peer that never reads",
           wanted_bytes=4 * len(content.data), rss_growth_peak_bytes=growth,
           good_peer_fetch_s=round(seconds, 2))
    assert stalled, "the victim never opened a stream to the stalled peer"
    assert growth < 96 * MiB, growth  # far below the 256 MiB wanted
    good.scope.cancel()


async def test_a_stream_flood_from_one_peer_is_refused_while_others_are_served(
        victim, nursery: trio.Nursery) -> None:
    daemon, content = victim
    _, _, addr = tcp_target(daemon)
    victim_id = _victim_id(addr)
    hostile = new_host()
    await nursery.start(hostile.run)
    await hostile.connect(addr)
    for conn in hostile.libp2p.get_network().get_connections(victim_id):
        # a hostile peer does not respect its own side's limit on streams it opens
        conn.muxed_conn.stream_backlog_semaphore = trio.Semaphore(1 << 20)
    attempts = pick(1500, 5000)
    opened = refused = 0
    held = []
    with trio.move_on_after(120):
        for _ in range(attempts):
            try:
                with trio.fail_after(2):
                    s = await hostile.new_stream(victim_id, [PROTOCOL_1_2_0])
                held.append(s)
                opened += 1
            except Exception:  # noqa: BLE001 - a reset or a negotiation timeout: refused
                refused += 1
            if refused >= 20:
                break
    alive = 0
    for s in held:
        with contextlib.suppress(Exception):
            await s.write(b"")
            alive += 1
    good = Peer()
    await nursery.start(good.run)
    with trio.fail_after(20):
        await good.host.connect(addr)
    seconds = await fetch_all(good, content)
    stats = metric(daemon, "pinfold_libp2p_peers_connected")
    record("security", "stream flood from one peer", attempts=opened + refused,
           streams_opened=opened, refused={"streams over 128 per peer": refused},
           good_peer_fetch_s=round(seconds, 2), peers_connected=int(stats))
    assert opened <= 128 + 8, opened  # the per-peer limit (and a few closing meanwhile)
    assert refused > 0
    good.scope.cancel()


async def test_a_connection_flood_is_bounded_and_connected_peers_keep_fetching(
        victim, nursery: trio.Nursery) -> None:
    daemon, content = victim
    host, port, addr = tcp_target(daemon)
    good = Peer()
    await nursery.start(good.run)
    await good.host.connect(addr)
    # one identity dialling from many hosts: at most one connection for it
    kp = create_new_key_pair()
    twins = [Host(kp, HostConfig(listen=("/ip4/127.0.0.1/tcp/0",))) for _ in range(8)]
    for t in twins:
        await nursery.start(t.run)

    async def dial(t: Host) -> None:
        with contextlib.suppress(Exception):
            await t.connect(addr)

    async with trio.open_nursery() as n:
        for t in twins:
            n.start_soon(dial, t)
    with daemon.client() as c:
        same_id = [p for p in c.peers() if p["peer_id"] == str(twins[0].peer_id)]
    assert len(same_id) <= 1
    # thousands of TCP connections that never handshake
    n_socks = pick(1000, 3000)
    socks = []
    fds_peak = 0
    try:
        for _ in range(n_socks):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((host, port))
            socks.append(s)
        await trio.lowlevel.checkpoint()
        fds_peak = open_fds(daemon.pid)
        # the connected peer keeps fetching, the RPC keeps answering
        seconds = await fetch_all(good, content)
        with daemon.client() as c:
            assert c.id()["peer_id"]
        fds_peak = max(fds_peak, open_fds(daemon.pid))
        closed = sum(_closed_by_peer(s) for s in socks)
    finally:
        for s in socks:
            s.close()
    # once the flood stops, new peers connect again
    late = Peer()
    await nursery.start(late.run)
    with trio.fail_after(60):
        while True:
            try:
                await late.host.connect(addr)
                break
            except Exception:  # noqa: BLE001 - slots free as the idle sockets are reaped
                await trio.sleep(0.2)
    record("security", "connection flood", idle_tcp_connections=n_socks,
           victim_fds_peak=fds_peak, same_peer_dialers=len(twins),
           same_peer_connections=len(same_id), good_peer_fetch_s=round(seconds, 2),
           refused={"idle TCP connections closed by the victim": closed,
                    "duplicate connections of one peer": len(twins) - len(same_id)})
    assert fds_peak < 256 + 64, fds_peak  # bounded by node.max_connections, not by the flood
    good.scope.cancel()
    late.scope.cancel()


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # still open (held by the victim or waiting in its accept queue)
    except OSError:
        return True  # reset
