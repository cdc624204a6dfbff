"""Names in a real cluster (issue 16): versions pushed on one node resolve and
pull byte-identical on the others; concurrent tag moves converge; a hostile
member's records change nothing (and removing a record does not erase it); a
node that joins later learns every name.

Five real daemons (a, b, c honest; h a member whose key was never granted the
name; d joins last), one cluster, the test TIMERS.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from pinfold.blockstore.cid import make_cid
from pinfold.client import RpcError
from pinfold.daemon.home import Home
from pinfold.daemon.names.keys import load_signer
from pinfold.daemon.p2p.identity import load_identity
from pinfold.names.records import RetireRecord, TagRecord, VersionRecord, sign_record

from tests.support.cluster import Cluster, configure, metric, peer_id, replication
from tests.support.daemon import DaemonProcess, cli_json, run_cli, stop_all
from tests.support.wait import wait_until

REPLICATION = replication(rmin=1, rmax=2, p_prior=0.9)
NAME = "org/model"


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("names")
    ds = [DaemonProcess(root, n) for n in ("a", "b", "c", "h", "d")]
    for d in ds:
        d.init()
    ids = [peer_id(d) for d in ds]
    cluster = Cluster(nodes=ds, ids=ids)
    try:
        configure(ds[0], cluster="names", trusted=ids, bootstrap=[], replication=REPLICATION)
        ds[0].start()
        with ds[0].client() as c:
            seed = c.id()["addresses"][0]
        for d in ds[1:]:
            configure(d, cluster="names", trusted=ids, bootstrap=[seed],
                      replication=REPLICATION)
        for d in ds[1:4]:
            d.start()
        want = sorted(ids[:4])

        def all_alive() -> bool:
            for d in ds[:4]:
                with d.client() as c:
                    alive = sorted(p["peer_id"] for p in c.cluster_peers()
                                   if p["state"] == "alive")
                if alive != want:
                    return False
            return True

        wait_until(all_alive, timeout_s=90, what="a, b, c and h to see 4 alive peers")
        yield cluster
    finally:
        stop_all(ds)


def _model(tmp: Path, seed: int, big: bytes) -> Path:
    d = tmp / f"model-{seed}"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text(f'{{"seed": {seed}}}')
    (d / "sub" / "weights.bin").write_bytes(big)
    return d


def _resolves(d: DaemonProcess, ref: str) -> str | None:
    with d.client() as c:
        try:
            return c.resolve(ref)
        except RpcError:
            return None


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_versions_pushed_on_one_node_resolve_and_pull_identically_elsewhere(
        cl: Cluster, tmp_path: Path) -> None:
    a, b, c = cl.nodes[:3]
    rng = random.Random(1)
    v1 = _model(tmp_path, 1, rng.randbytes(400_000))
    v2 = _model(tmp_path, 2, rng.randbytes(400_000))
    r1 = cli_json(a.home, "push", NAME, str(v1), "-m", "first", "--replicas", "2")
    r2 = cli_json(a.home, "push", NAME, str(v2), "-m", "second", "--replicas", "2",
                  "--tag", "stable")
    assert (r1["version"], r2["version"]) == (1, 2)
    for d in (b, c):
        wait_until(lambda d=d: _resolves(d, f"{NAME}@main") == r2["cid"], timeout_s=60,
                   what=f"{d.name} to resolve {NAME}@main to version 2")
    for d in (b, c):
        out = tmp_path / f"pull-{d.name}"
        run_cli(d.home, "pull", NAME, "-o", str(out))
        assert _tree_digest(out) == _tree_digest(v2)
        out1 = tmp_path / f"pull1-{d.name}"
        run_cli(d.home, "pull", f"{NAME}@1", "-o", str(out1))
        assert _tree_digest(out1) == _tree_digest(v1)
        cat = run_cli(d.home, "cat", f"{NAME}@stable/config.json").stdout
        assert cat == (v2 / "config.json").read_bytes()
    hist = cli_json(c.home, "versions", NAME)
    assert [v["version"] for v in hist["versions"]] == [2, 1]
    assert hist["versions"][0]["tags"] == ["main", "stable"]
    assert hist["versions"][0]["message"] == "second"
    assert hist["versions"][1]["superseded"][0]["tag"] == "main"
    sha = {f["path"]: f["sha256"] for f in hist["versions"][0]["files"]}
    assert sha["sub/weights.bin"] == hashlib.sha256(
        (v2 / "sub" / "weights.bin").read_bytes()).hexdigest()
    wait_until(lambda: len(cli_json(c.home, "versions", NAME)["versions"][0]["holders"]) >= 2,
               timeout_s=60, what="version 2 to have 2 holders")
    # `pin` takes a name ref too: the version's root.
    assert cli_json(c.home, "pin", "add", f"{NAME}@1", "--replicas", "2")["cid"] == r1["cid"]


def _tag_version(d: DaemonProcess, tag: str) -> int | None:
    with d.client() as c:
        try:
            return c.resolve_info(f"{NAME}@{tag}")["version"]
        except RpcError:
            return None


def test_concurrent_tag_moves_from_two_trusted_nodes_converge(cl: Cluster) -> None:
    a, b, c = cl.nodes[:3]
    wait_until(lambda: _resolves(b, f"{NAME}@2") is not None, timeout_s=60,
               what="b to know version 2")
    with a.client() as ca:
        ca.grant(NAME, cl.ids[1])
    wait_until(lambda: cl.ids[1] in cli_json(b.home, "versions", NAME)["publishers"],
               timeout_s=60, what="b to see its grant")
    # Both move `race` at once: neither has seen the other's move.
    with a.client() as ca, b.client() as cb:
        ca.tag(f"{NAME}@1", "race")
        cb.tag(f"{NAME}@2", "race")

    def superseded_race(d: DaemonProcess) -> int:
        return sum(1 for v in cli_json(d.home, "versions", NAME)["versions"]
                   for s in v["superseded"] if s["tag"] == "race")

    def agreed() -> int | None:
        seen = {_tag_version(d, "race") for d in (a, b, c)}
        if len(seen) != 1 or None in seen:
            return None
        # Both moves arrived everywhere: the loser is listed as superseded.
        return seen.pop() if all(superseded_race(d) == 1 for d in (a, b, c)) else None

    winner = wait_until(agreed, timeout_s=60, what="a, b and c to agree on the race tag")
    assert winner in (1, 2)
    assert {_tag_version(d, "race") for d in (a, b, c)} == {winner}


def test_hostile_members_records_are_rejected_and_change_nothing(cl: Cluster) -> None:
    a, b, c, h = cl.nodes[:4]
    wait_until(lambda: _resolves(h, f"{NAME}@2") is not None, timeout_s=60,
               what="h to know the name")
    before = {d.name: cli_json(d.home, "versions", NAME) for d in (a, b, c)}
    # h's own daemon refuses to publish under a name it was not granted...
    bad = run_cli(h.home, "tag", f"{NAME}@1", "main", check=False)
    assert bad.returncode != 0 and b"may not publish" in bad.stderr
    # ...so it signs records itself, as a modified daemon would, and gossips them.
    home = Home(root=h.home)
    evil = load_signer(home.root, "self", load_identity(home.identity_path))
    k = evil.public_key
    root = str(make_cid(b"not the model"))
    forged = [
        VersionRecord(name=NAME, lamport=1, time_ms=0, key=k, version=1, parent=0, root=root,
                      size=1),
        VersionRecord(name=NAME, lamport=999, time_ms=0, key=k, version=3, parent=2,
                      root=root, size=1),
        TagRecord(name=NAME, lamport=1000, time_ms=0, key=k, tag="main", version=1),
        RetireRecord(name=NAME, lamport=1001, time_ms=0, key=k, version=2),
    ]
    blocks = [sign_record(r, evil.sign).block for r in forged]
    with h.client() as ch:
        ch.import_records(blocks)
        # ...and it removes one of the owner's records from the pinset.
        victim = ch.export_records(NAME)[0]
        victim_cid = str(make_cid(victim, 0x71))
        ch.unpin(victim_cid)

    def rejected_everywhere() -> bool:
        return all(metric(d, "pinfold_names_records_rejected") >= len(forged) - 1
                   for d in (a, b, c))

    wait_until(rejected_everywhere, timeout_s=60, what="a, b, c to count h's records")
    wait_until(lambda: all(_pinned_in_cluster(d, victim_cid) for d in (a, b, c)),
               timeout_s=60, what="the removed record to be put back")
    for d in (a, b, c):
        after = cli_json(d.home, "versions", NAME)
        assert after == before[d.name] or _same_history(after, before[d.name])
        with pytest.raises(RpcError):
            with d.client() as cd:
                cd.resolve(f"{NAME}@3")
        assert _tag_version(d, "main") == 2


def _pinned_in_cluster(d: DaemonProcess, cid: str) -> bool:
    with d.client() as c:
        try:
            c.status(cid)
            return True
        except RpcError:
            return False


def _same_history(x: dict, y: dict) -> bool:
    def strip(h: dict) -> list:
        return [{k: v for k, v in ver.items() if k not in ("holders", "availability")}
                for ver in h["versions"]]
    return (x["creator"], x["publishers"], strip(x)) == (y["creator"], y["publishers"],
                                                         strip(y))


def test_versions_rm_unpins_a_version_and_keeps_its_record(cl: Cluster, tmp_path: Path
                                                           ) -> None:
    a, c = cl.nodes[0], cl.nodes[2]
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(random.Random(7).randbytes(50_000))
    new.write_bytes(random.Random(8).randbytes(50_000))
    v1 = cli_json(a.home, "push", "org/retire", str(old), "--replicas", "1")
    v2 = cli_json(a.home, "push", "org/retire", str(new), "--replicas", "1")
    v3 = cli_json(a.home, "push", "org/retire", str(new), "-m", "same bytes as 2")
    run_cli(a.home, "versions", "rm", "org/retire@1")
    run_cli(a.home, "versions", "rm", "org/retire@2")

    def retired_on_c() -> bool:
        try:
            hist = cli_json(c.home, "versions", "org/retire")
        except AssertionError:
            return False
        return [v["retired"] for v in hist["versions"]] == [False, True, True]

    wait_until(retired_on_c, timeout_s=60, what="c to see versions 1 and 2 retired")
    assert cli_json(c.home, "versions", "org/retire")["versions"][2]["cid"] == v1["cid"]
    with a.client() as ca:
        with pytest.raises(RpcError):
            ca.status(v1["cid"])  # unpinned
        # Version 3 holds the same root as the retired version 2: it stays pinned.
        assert v2["cid"] == v3["cid"]
        assert ca.status(v3["cid"])["cid"] == v3["cid"]
        assert ca.resolve("org/retire") == v3["cid"]
        # The records ride as cluster pins; pin ls lists them only when asked.
        listed = [p["name"] for p in ca.pins()]
        assert listed and not any(n.startswith("name:") for n in listed)
        records = [p["name"] for p in ca.pins(records=True)]
        assert "name:org/retire retire 1" in records and "name:org/retire version 3" in records


@pytest.mark.slow  # 100 pushes: about 3 minutes on a loaded 2-core machine
def test_a_node_that_joins_later_sees_every_name(cl: Cluster, tmp_path: Path) -> None:
    a, d = cl.nodes[0], cl.nodes[4]
    count = 100
    with a.client() as ca:
        for i in range(count):
            f = tmp_path / f"w{i}.bin"
            f.write_bytes(i.to_bytes(4, "big") * 64)
            ca.push(f"bulk/m{i % 10}", f, message=f"push {i}")
    d.start()
    want = {f"bulk/m{j}": count // 10 for j in range(10)}

    def all_seen() -> bool:
        with d.client() as cd:
            got = {n["name"]: n["latest"] for n in cd.names() if n["name"].startswith("bulk/")}
        return got == want

    wait_until(all_seen, timeout_s=120, what="d to learn every pushed version")
    for j in range(10):
        assert _resolves(d, f"bulk/m{j}@main") == _resolves(a, f"bulk/m{j}@main")


def test_pin_rm_of_a_versions_cluster_pin_is_refused_on_any_member(cl: Cluster,
                                                                   tmp_path: Path) -> None:
    """The cluster pin of a live version: ``pin rm`` on another member is refused
    (its book knows the version) and the pinset keeps it; ``--force`` removes it."""
    a, c = cl.nodes[0], cl.nodes[2]
    f = tmp_path / "kept.bin"
    f.write_bytes(random.Random(9).randbytes(20_000))
    v1 = cli_json(a.home, "push", "org/kept", str(f), "--replicas", "1")
    wait_until(lambda: _resolves(c, "org/kept@1") == v1["cid"], timeout_s=60,
               what="c to know org/kept@1")
    refused = run_cli(c.home, "pin", "rm", v1["cid"], check=False)
    assert refused.returncode == 7, refused.stderr
    assert b"org/kept@1 (version 1 of org/kept, tags: main)" in refused.stderr
    assert b"`pinfold versions rm org/kept@1`" in refused.stderr
    assert _pinned_in_cluster(a, v1["cid"]) and _pinned_in_cluster(c, v1["cid"])
    cli_json(c.home, "pin", "rm", "--force", v1["cid"])
    wait_until(lambda: not _pinned_in_cluster(a, v1["cid"]), timeout_s=60,
               what="the forced unpin to reach a")
