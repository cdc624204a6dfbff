"""Hostile RPC clients: malformed, out-of-order and flooding frames get an error and a
closed connection, and random frames (Hypothesis) never break the server."""

from __future__ import annotations

import logging
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import msgpack
import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pinfold.daemon.rpc import wire as w
from pinfold.daemon.rpc.connection import RpcConnection, open_rpc_connection
from pinfold.daemon.rpc.server import RpcLimits, RpcServer

from tests.rpc.rpc_harness import Handlers, Harness, MiB, in_thread


# ------------------------------------------------------------------ hostile clients


class RawClient:
    """A hand-driven client socket for sending arbitrary bytes."""

    def __init__(self, path: Path, hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)  # a deadline: a hung server fails the test
        self.sock.connect(str(path))
        self.decoder = w.FrameDecoder()
        if hello:
            self.sock.sendall(w.encode_bytes(w.Hello()))
            assert isinstance(self.recv(), w.Welcome)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send; False if the server already closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def recv(self) -> w.ServerMessage | None:
        """The next server message, or None at EOF (or a reset)."""
        while True:
            body = self.decoder.next_body()
            if body is not None:
                return w.decode_server_message(body)
            try:
                n = self.sock.recv_into(self.decoder.get_buffer())
            except ConnectionResetError:
                return None
            if n == 0:
                return None
            self.decoder.commit(n)

    def recv_until_closed(self) -> list[w.ServerMessage]:
        out = []
        while (msg := self.recv()) is not None:
            out.append(msg)
        return out


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


CALL_1 = frame({"t": "call", "id": 1, "method": "gated_upload_sum", "upload": True})
HOSTILE = {
    "garbage": (b"\x00\x00\x00\x05hello", "protocol_error"),
    "huge_length": (b"\xff\xff\xff\xff" + b"x" * 100, "frame_too_large"),
    "zero_length": (b"\x00\x00\x00\x00", "protocol_error"),
    "not_a_map": (frame([1, 2, 3]), "protocol_error"),
    "unknown_type": (frame({"t": "explode", "id": 1}), "protocol_error"),
    "unknown_field": (frame({"t": "call", "id": 1, "method": "echo", "sudo": True}),
                      "protocol_error"),
    "wrong_type": (frame({"t": "call", "id": "1", "method": "echo"}), "protocol_error"),
    "id_reused": (frame({"t": "call", "id": 5, "method": "echo"})
                  + frame({"t": "call", "id": 5, "method": "echo"}), "protocol_error"),
    "id_decreasing": (frame({"t": "call", "id": 5, "method": "echo"})
                      + frame({"t": "call", "id": 4, "method": "echo"}), "protocol_error"),
    "data_unknown_id": (frame({"t": "data", "id": 9, "data": b"x"}), "protocol_error"),
    "credit_unknown_id": (frame({"t": "credit", "id": 9, "bytes": 10}), "protocol_error"),
    "cancel_unknown_id": (frame({"t": "cancel", "id": 9}), "protocol_error"),
    "data_without_upload": (frame({"t": "call", "id": 1, "method": "slow"})
                            + frame({"t": "data", "id": 1, "data": b"x"}), "protocol_error"),
    "end_twice": (CALL_1 + frame({"t": "end", "id": 1}) + frame({"t": "end", "id": 1}),
                  "protocol_error"),
    "credit_overflow": (frame({"t": "call", "id": 1, "method": "slow"})
                        + frame({"t": "credit", "id": 1, "bytes": 1}), "protocol_error"),
    "data_beyond_credit": (CALL_1 + frame({"t": "data", "id": 1, "data": b"x" * MiB}) * 5,
                           "protocol_error"),
    "msgpack_bomb": (frame({"t": "end", "id": 1, "x": [[]] * 20000}), "protocol_error"),
    "deep_nesting": (struct.pack(">I", 5001) + b"\x91" * 5000 + b"\xc0", "protocol_error"),
    "ext_type": (struct.pack(">I", 6) + b"\xd6\xff\x00\x00\x00\x01", "protocol_error"),
    "second_hello": (w.encode_bytes(w.Hello()), "protocol_error"),
    "welcome_from_client": (frame({"t": "welcome", "protocol": "pinfold-rpc", "version": 1,
                                   "daemon_version": "x", "window": w.DEFAULT_WINDOW_BYTES}),
                            "protocol_error"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_frames_get_an_error_and_close(rpc: Harness, case: str) -> None:
    payload, code = HOSTILE[case]

    def attack() -> list[w.ServerMessage]:
        with RawClient(rpc.path) as raw:
            raw.send(payload)
            return raw.recv_until_closed()

    def good_client() -> Any:
        with RpcConnection(rpc.path) as conn:
            return conn.call("upload_sum", upload=[b"ok"])

    async with open_rpc_connection(rpc.path) as bystander:
        async with bystander.stream("items", {"n": 3}) as before:
            replies = await in_thread(attack)
            assert [i async for i in before] == [{"i": 0}, {"i": 1}, {"i": 2}]
        errors = [m for m in replies if isinstance(m, w.ErrorReply) and m.id is None]
        assert len(errors) == 1, replies
        assert errors[0].code == code
        assert errors[0].message
        # The server still serves new clients and the bystander's connection.
        assert (await in_thread(good_client))["bytes"] == 2
        assert (await bystander.call("echo"))["method"] == "echo"


async def test_frame_before_hello_and_bad_versions(rpc: Harness) -> None:
    def attempt(first: bytes) -> list[w.ServerMessage]:
        with RawClient(rpc.path, hello=False) as raw:
            raw.send(first)
            return raw.recv_until_closed()

    replies = await in_thread(lambda: attempt(frame({"t": "call", "id": 1, "method": "echo"})))
    assert [(m.code, m.message) for m in replies] == [
        ("protocol_error", "the first frame must be hello")]
    replies = await in_thread(lambda: attempt(frame(
        {"t": "hello", "protocol": "pinfold-rpc", "version": 7, "window": 1})))
    assert replies[0].code == "unsupported_version"
    assert "version 1" in replies[0].message and "version 7" in replies[0].message


async def test_unsupported_version_via_client_raises(rpc: Harness) -> None:
    """What an old CLI sees against a newer daemon (or back): a clear refused handshake."""
    def run() -> None:
        with RawClient(rpc.path, hello=False) as raw:
            raw.send(frame({"t": "hello", "protocol": "pinfold-rpc", "version": 2,
                            "window": w.DEFAULT_WINDOW_BYTES}))
            (reply,) = raw.recv_until_closed()
        assert isinstance(reply, w.ErrorReply) and reply.id is None
        assert reply.code == "unsupported_version"

    await in_thread(run)


async def test_handshake_timeout(start: Callable[..., Any]) -> None:
    h = await start(limits=RpcLimits(handshake_timeout_s=0.05))

    def idle() -> list[w.ServerMessage]:
        with RawClient(h.path, hello=False) as raw:
            return raw.recv_until_closed()

    replies = await in_thread(idle)
    assert [m.code for m in replies] == ["handshake_timeout"]


async def test_client_that_never_reads_is_cut_off(start: Callable[..., Any]) -> None:
    """Requests to unknown methods, never reading the replies: the server bounds what
    it queues and closes the connection rather than growing without limit."""
    h = await start(limits=RpcLimits(max_pending_control_frames=50))

    def flood() -> bool:
        with RawClient(h.path) as raw:
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for rid in range(1, 5_000_000):
                if not raw.send(frame({"t": "call", "id": rid, "method": "x" * 200})):
                    return True
            return False

    assert await in_thread(flood)
    assert h.server.statistics().protocol_errors == 1


async def test_late_frames_for_finished_requests_are_ignored(rpc: Harness) -> None:
    """Frames that crossed the final reply in flight (data, credit, cancel, end) are
    dropped without error."""
    def run() -> list[w.ServerMessage]:
        with RawClient(rpc.path) as raw:
            raw.send(frame({"t": "call", "id": 1, "method": "fail_internal",
                            "upload": True}))
            first = raw.recv()
            raw.send(frame({"t": "data", "id": 1, "data": b"late"})
                         + frame({"t": "credit", "id": 1, "bytes": 100})
                         + frame({"t": "cancel", "id": 1}) + frame({"t": "end", "id": 1})
                         + frame({"t": "call", "id": 2, "method": "echo"}))
            second = raw.recv()
            return [first, second]

    first, second = await in_thread(run)
    assert isinstance(first, w.ErrorReply) and first.id == 1
    assert isinstance(second, w.Result) and second.id == 2


async def test_statistics(rpc: Harness) -> None:
    def run() -> None:
        with RpcConnection(rpc.path) as conn:
            conn.call("upload_sum", upload=[b"a" * 1000])
            list(conn.stream("download", {"n": 5000}))

    await in_thread(run)
    stats = rpc.server.statistics()
    assert stats.requests_total == 2
    assert stats.requests_in_flight == 0
    assert stats.bytes_in > 1000 and stats.bytes_out > 5000
    assert stats.connections_total == 1


# ------------------------------------------------------------------ fuzz


class ServerThread:
    """A server in its own thread and trio run, for synchronous (Hypothesis) tests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handlers = Handlers()
        self.failures: list[str] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    async def _main(self) -> None:
        table = self.handlers.table()
        del table["shutdown"]
        server = RpcServer(self.path, table, daemon_version="fuzz",
                           limits=RpcLimits(handshake_timeout_s=5))
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                self._ready.set()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None and self._scope is not None
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerThread]:
    path = Path(tempfile.mkdtemp(prefix="rpcfuzz", dir="/tmp"))
    failures: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("RPC connection failed"):
                failures.append(self.format(record))

    handler = Catch()
    logging.getLogger("pinfold.daemon.rpc").addHandler(handler)
    try:
        with ServerThread(path / "rpc.sock") as server:
            server.failures = failures
            yield server
    finally:
        logging.getLogger("pinfold.daemon.rpc").removeHandler(handler)
        shutil.rmtree(path, ignore_errors=True)


FUZZ_METHODS = ["echo", "upload_sum", "gated_upload_sum", "download", "items", "echo_upload",
                "slow", "fail_internal", "nope"]
junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**64 - 1), st.text(max_size=8),
                 st.binary(max_size=8), st.lists(st.integers(-9, 9), max_size=3),
                 st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2))
small_ids = st.integers(1, 6)
wire_maps = st.fixed_dictionaries(
    {"t": st.sampled_from(["hello", "call", "data", "end", "credit", "cancel", "welcome",
                           "item", "x"])},
    optional={
        "id": st.one_of(small_ids, junk),
        "method": st.one_of(st.sampled_from(FUZZ_METHODS), junk),
        "params": st.one_of(st.fixed_dictionaries({"n": st.integers(0, 3 * MiB)}), junk),
        "upload": st.one_of(st.booleans(), junk),
        "data": st.one_of(st.binary(min_size=1, max_size=2048), junk),
        "bytes": st.one_of(st.integers(1, 8 * MiB), junk),
        "protocol": st.one_of(st.just("pinfold-rpc"), junk),
        "version": st.one_of(st.just(1), junk),
        "window": st.one_of(st.just(w.DEFAULT_WINDOW_BYTES), junk),
        "zz": junk,
    },
)
valid_messages = st.one_of(
    st.builds(w.Request, id=small_ids, method=st.sampled_from(FUZZ_METHODS),
              params=st.fixed_dictionaries({"n": st.integers(0, 3 * MiB)}),
              upload=st.booleans()),
    st.builds(w.Data, id=small_ids, data=st.binary(min_size=1, max_size=4096)),
    st.builds(w.End, id=small_ids),
    st.builds(w.Credit, id=small_ids, nbytes=st.integers(1, 4 * MiB)),
    st.builds(w.Cancel, id=small_ids),
)
fuzz_chunks = st.one_of(
    valid_messages.map(w.encode_bytes),
    valid_messages.map(w.encode_bytes),
    wire_maps.map(frame),
    st.binary(max_size=40).map(lambda b: struct.pack(">I", len(b)) + b),
    st.binary(max_size=12),
    st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
)


@given(hello=st.booleans(), chunks=st.lists(fuzz_chunks, max_size=10))
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_fuzz_random_frames_never_break_the_server(
        fuzz_server: ServerThread, hello: bool, chunks: list[bytes]) -> None:
    with RawClient(fuzz_server.path, hello=hello) as raw:
        raw.send(b"".join(chunks))
        raw.sock.shutdown(socket.SHUT_WR)  # EOF: the server must finish and close
        replies = raw.recv_until_closed()
    for msg in replies:
        event(f"reply {type(msg).__name__} {getattr(msg, 'code', '')}")
        if isinstance(msg, w.ErrorReply):
            assert w.is_valid_code(msg.code) and msg.message
    with RpcConnection(fuzz_server.path) as conn:
        assert conn.call("echo", {"k": 1})["params"] == {"k": 1}
    assert fuzz_server.failures == []
