"""The home directory: where config, identity key, store and socket live.

Resolution order (DESIGN.md, Interface): ``--home DIR``, else ``$PINFOLD_HOME``,
else ``~/.pinfold``. Layout::

    <home>/config.toml     the TOML configuration (written by ``pinfold init``)
    <home>/identity.key    the libp2p Ed25519 private key, protobuf-serialized, mode 0600
    <home>/store/          the LMDB environment (data.mdb, lock.mdb)
    <home>/store.json      which store this home uses (its store ID) and what it
                           last held; written by the daemon (``StoreRecord``)
    <home>/rpc.sock        the RPC socket unless ``rpc.socket`` says otherwise
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pinfold.config import Config, ConfigError, load, render


class HomeError(Exception):
    """The home directory is missing, not initialised, or already initialised."""

    code = "home_error"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The home directory path (not created)."""
    if home:
        return Path(home).expanduser().absolute()
    env = os.environ.get("PINFOLD_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".pinfold"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreRecord:
    """What ``<home>/store.json`` says about the home's store.

    It lives outside the store, so a start can tell a store that is gone
    (removed, or replaced by a new empty one) from a home never started.

    Attributes:
        store_id: the store's ID (``LmdbBlockStore.store_id``, 32 hex digits).
        first_seen: when this home first used that store, unix seconds.
        updated: when the counts below were recorded, unix seconds.
        blocks: blocks in the store then.
        bytes: bytes of block data then.
        pins: local pins then.
    """

    store_id: str
    first_seen: float
    updated: float
    blocks: int
    bytes: int
    pins: int

    def describe(self) -> str:
        """``store 3f2a... (since 2026-12-03 07:00:00 UTC; last recorded at ... holding ...)``."""
        def when(t: float) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))

        def n(count: int, what: str) -> str:
            return f"{count} {what}" + ("" if count == 1 else "s")

        return (f"store {self.store_id} (since {when(self.first_seen)}; last recorded at "
                f"{when(self.updated)} holding {n(self.blocks, 'block')}, "
                f"{n(self.bytes, 'byte')}, {n(self.pins, 'pin')})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Home:
    """Paths inside one home directory."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def identity_path(self) -> Path:
        return self.root / "identity.key"

    @property
    def store_path(self) -> Path:
        return self.root / "store"

    @property
    def store_record_path(self) -> Path:
        return self.root / "store.json"

    def read_store_record(self) -> StoreRecord | None:
        """The ``store.json`` record, or None when there is none (a home not yet started).

        Raises:
            HomeError: the file exists but cannot be read or is not a record.
        """
        path = self.store_record_path
        try:
            raw = json.loads(path.read_text())
            return StoreRecord(store_id=str(raw["store_id"]),
                               first_seen=float(raw["first_seen"]),
                               updated=float(raw["updated"]), blocks=int(raw["blocks"]),
                               bytes=int(raw["bytes"]), pins=int(raw["pins"]))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HomeError(f"{path}: {exc.strerror or exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise HomeError(f"{path} is not a pinfold store record ({exc}): restore it, or "
                            "remove it to have the daemon write a new one") from exc

    def write_store_record(self, record: StoreRecord) -> None:
        """Write ``store.json`` atomically (mode 0600). Raises ``OSError``."""
        path = self.store_record_path
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(record), f, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def socket_path(self, config: Config) -> Path:
        """The RPC socket path: ``rpc.socket`` if set (relative to the home), else ``<home>/rpc.sock``."""
        if config.rpc.socket:
            p = Path(config.rpc.socket).expanduser()
            return p if p.is_absolute() else self.root / p
        return self.root / "rpc.sock"

    def load_config(self) -> Config:
        """Load ``config.toml`` (defaults when absent). Raises ``ConfigError``."""
        return load(self.config_path)

    @property
    def initialised(self) -> bool:
        return self.config_path.exists() and self.identity_path.exists()

    def missing_parts(self) -> list[str]:
        """What ``pinfold init`` would still create here: ``config.toml``, ``identity.key``."""
        return [p.name for p in (self.config_path, self.identity_path) if not p.exists()]

    def check_initialised(self) -> None:
        """Raise ``HomeError`` naming what is missing and the command that creates it.

        ``pinfold init`` fills in a missing part and keeps the other, so the
        message can always point at it.
        """
        missing = self.missing_parts()
        if not missing:
            return
        if len(missing) == 2:
            raise HomeError(f"{self.root} is not initialised: run `pinfold --home {self.root} "
                            "init` first")
        if missing == ["identity.key"]:
            raise HomeError(
                f"{self.identity_path} is missing (config.toml is there): run `pinfold --home "
                f"{self.root} init` to create a new key and keep config.toml; the node then "
                "has a new peer ID, so if other peers list the old one (cluster.trusted_peers, "
                "bootstrap addresses), restore the old identity.key instead")
        raise HomeError(
            f"{self.config_path} is missing (identity.key is there): run `pinfold --home "
            f"{self.root} init` to write one with defaults and keep identity.key")


def init_home(root: Path, config: Config) -> Home:
    """Create what a home lacks: the directory (0700), ``config.toml``, the identity key (0600).

    Never overwrites: a part that exists is kept, so ``init`` on a home with a
    config but no key (or the reverse) completes it.

    Returns:
        The home (``Home.missing_parts()`` before the call says what it created).

    Raises:
        HomeError: ``root`` is not a directory, or the home already holds both.
    """
    home = Home(root=root)
    if root.exists() and not root.is_dir():
        raise HomeError(f"{root} exists and is not a directory")
    missing = home.missing_parts()
    if not missing:
        raise HomeError(f"{root} is already initialised (config.toml and identity.key exist)")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if "identity.key" in missing:
        from pinfold.daemon.p2p.identity import create_identity

        create_identity(home.identity_path)
    if "config.toml" in missing:
        tmp = home.config_path.with_suffix(".tmp")
        tmp.write_text(render(config))
        os.replace(tmp, home.config_path)
    return home


__all__ = ["ConfigError", "Home", "HomeError", "StoreRecord", "init_home", "resolve_home"]
