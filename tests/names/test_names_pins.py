"""Pins of versions, on one real daemon: ``pin rm`` refuses the root of a live
version (so ``repo gc`` cannot break ``pull NAME@N``) unless ``--force``, from
the CLI and the Python client; ``versions rm`` refuses a version a tag points
at (so ``NAME@TAG`` cannot name deleted blocks) unless ``--force``; ``pin ls``
and ``pin status`` label a version's pin ``NAME@N`` with its tags.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pinfold.client import RpcError
from pinfold.daemon.cli.format import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE
from tests.support.daemon import DaemonProcess, cli_json, run_cli


def _push(d: DaemonProcess, tmp_path: Path, name: str, body: bytes, *extra: str) -> dict:
    f = tmp_path / f"{len(list(tmp_path.iterdir()))}.bin"
    f.write_bytes(body)
    return cli_json(d.home, "push", name, str(f), *extra)


def _pinned(d: DaemonProcess) -> set[str]:
    with d.client() as c:
        return {p["cid"] for p in c.pins()}


def test_pin_rm_of_a_live_versions_root_is_refused_and_gc_keeps_it(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    v1 = _push(daemon, tmp_path, "org/keep", b"one" * 500)
    v2 = _push(daemon, tmp_path, "org/keep", b"two" * 500)
    cli_json(daemon.home, "tag", "org/keep@1", "stable")

    tagged = run_cli(daemon.home, "pin", "rm", v1["cid"], check=False)
    assert tagged.returncode == EXIT_REFUSED, tagged.stderr
    err = tagged.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{v1['cid']} is the root of org/keep@1 (version 1 of org/keep, tags: stable)" in err
    assert "`pinfold versions rm org/keep@1`" in err
    assert f"`pinfold pin rm --force {v1['cid']}`" in err
    latest = run_cli(daemon.home, "pin", "rm", v2["cid"], check=False)
    assert latest.returncode == EXIT_REFUSED
    assert b"org/keep@2 (version 2 of org/keep, tags: main)" in latest.stderr

    # An untagged older version is live too.
    v3 = _push(daemon, tmp_path, "org/keep", b"three" * 500)
    untagged = run_cli(daemon.home, "pin", "rm", v2["cid"], check=False)
    assert untagged.returncode == EXIT_REFUSED
    assert b"org/keep@2 (version 2 of org/keep, no tags)" in untagged.stderr

    with daemon.client() as c, pytest.raises(RpcError) as refused:
        c.unpin(v1["cid"])
    assert refused.value.code == "pin_in_use" and "org/keep@1" in str(refused.value)

    # Nothing changed: every root is pinned, gc keeps the blocks, pull works.
    assert _pinned(daemon) == {v1["cid"], v2["cid"], v3["cid"]}
    run_cli(daemon.home, "repo", "gc")
    out = tmp_path / "pulled"
    run_cli(daemon.home, "pull", "org/keep@1", "-o", str(out))
    assert out.read_bytes() == b"one" * 500  # a one-file version pulls to the path


def test_pin_rm_names_every_version_sharing_the_root(daemon: DaemonProcess,
                                                     tmp_path: Path) -> None:
    v1 = _push(daemon, tmp_path, "org/twice", b"same" * 500)
    f = tmp_path / "again.bin"
    f.write_bytes(b"same" * 500)
    v2 = cli_json(daemon.home, "push", "org/twice", str(f))
    assert v1["cid"] == v2["cid"]
    refused = run_cli(daemon.home, "pin", "rm", v1["cid"], check=False)
    assert refused.returncode == EXIT_REFUSED
    err = refused.stderr.decode()
    assert "org/twice@1 (version 1 of org/twice, no tags) and org/twice@2" in err
    assert "`pinfold versions rm org/twice@1` then `pinfold versions rm org/twice@2`" in err


def test_pin_rm_force_and_retired_versions_unpin_as_before(daemon: DaemonProcess,
                                                           tmp_path: Path) -> None:
    v1 = _push(daemon, tmp_path, "org/gone", b"first" * 500)
    v2 = _push(daemon, tmp_path, "org/gone", b"second" * 500)
    forced = cli_json(daemon.home, "pin", "rm", "--force", v2["cid"])
    assert forced["cid"] == v2["cid"] and forced["state"] == "unpinned"
    assert _pinned(daemon) == {v1["cid"]}
    # A root that is not pinned any more is "not pinned", not "in use".
    again = run_cli(daemon.home, "pin", "rm", v2["cid"], check=False)
    assert again.returncode == EXIT_NOT_FOUND and b"in use" not in again.stderr
    assert b"is the root of" not in again.stderr

    # A retired version's root, pinned again by hand, is an ordinary pin.
    run_cli(daemon.home, "versions", "rm", "org/gone@1")
    run_cli(daemon.home, "pin", "add", v1["cid"])
    assert cli_json(daemon.home, "pin", "rm", v1["cid"])["cid"] == v1["cid"]
    assert _pinned(daemon) == set()
    with daemon.client() as c:
        c.pin(v1["cid"])
        assert c.unpin(v1["cid"])["state"] == "unpinned"


def test_pin_ls_labels_a_versions_pin_name_at_number_with_its_tags(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    v1 = _push(daemon, tmp_path, "org/ls", b"first" * 500, "--tag", "stable")
    v2 = _push(daemon, tmp_path, "org/ls", b"second" * 500)
    f = tmp_path / "same.bin"
    f.write_bytes(b"second" * 500)
    v3 = cli_json(daemon.home, "push", "org/ls", str(f), "--no-main")
    assert v3["cid"] == v2["cid"]
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"first" * 500)
    other = cli_json(daemon.home, "add", str(mine), "--name", "mine")
    assert other["cid"] == v1["cid"]  # the same bytes: one pin, both labels

    lines = sorted(run_cli(daemon.home, "pin", "ls").stdout.decode().splitlines())
    assert sorted([
        f"{v1['cid']} recursive pinned name='org/ls@1' [stable] (pinned as 'mine')",
        f"{v2['cid']} recursive pinned name='org/ls@2' [main], 'org/ls@3'",
    ]) == lines
    with daemon.client() as c:
        by_cid = {p["cid"]: p for p in c.pins()}
    assert by_cid[v2["cid"]]["versions"] == [
        {"name": "org/ls", "version": 2, "ref": "org/ls@2", "tags": ["main"],
         "retired": False},
        {"name": "org/ls", "version": 3, "ref": "org/ls@3", "tags": [], "retired": False}]

    # Retired versions drop out of the label while a live one shares the root...
    run_cli(daemon.home, "versions", "rm", "org/ls@3")
    ls = run_cli(daemon.home, "pin", "ls").stdout.decode()
    assert f"{v2['cid']} recursive pinned name='org/ls@2' [main]\n" in ls
    # ...and a retired version's root pinned again by hand says so.
    cli_json(daemon.home, "tag", "org/ls@2", "stable")
    run_cli(daemon.home, "versions", "rm", "org/ls@1")
    run_cli(daemon.home, "pin", "add", v1["cid"])
    ls = run_cli(daemon.home, "pin", "ls").stdout.decode()
    assert f"{v1['cid']} recursive pinned name='org/ls@1' (retired)\n" in ls


def test_versions_rm_of_a_tagged_version_is_refused_and_gc_keeps_its_blocks(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    v1 = _push(daemon, tmp_path, "org/tagged", b"one" * 500)
    v2 = _push(daemon, tmp_path, "org/tagged", b"two" * 500, "--tag", "stable")

    refused = run_cli(daemon.home, "versions", "rm", "org/tagged@2", check=False)
    assert refused.returncode == EXIT_REFUSED, refused.stderr
    err = refused.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("pinfold: error: org/tagged@2 has tags main, stable (org/tagged@main, "
                          "org/tagged@stable, org/tagged alone resolve to it): move the tags "
                          "first with `pinfold tag org/tagged@1 main` then "
                          "`pinfold tag org/tagged@1 stable`"), err
    assert "`pinfold versions rm --force org/tagged@2`" in err
    with daemon.client() as c, pytest.raises(RpcError) as raised:
        c.retire("org/tagged@2")
    assert raised.value.code == "pin_in_use"
    assert "org/tagged@2 has tags main, stable" in str(raised.value)
    solo = _push(daemon, tmp_path, "org/solo", b"alone" * 500)
    only = run_cli(daemon.home, "versions", "rm", "org/solo@1", check=False)
    assert only.returncode == EXIT_REFUSED
    assert b"push a new version and move the tag there with `pinfold tag org/solo@N TAG` " \
           b"(it is the only live version of org/solo)" in only.stderr

    # Nothing changed: no retire record, every root pinned, gc keeps the blocks.
    hist = cli_json(daemon.home, "versions", "org/tagged")["versions"]
    assert [(v["version"], v["tags"], v["retired"]) for v in hist] == [
        (2, ["main", "stable"], False), (1, [], False)]
    with daemon.client() as c:
        assert not [p for p in c.pins(records=True) if " retire " in p.get("name", "")]
    assert _pinned(daemon) == {v1["cid"], v2["cid"], solo["cid"]}
    assert cli_json(daemon.home, "repo", "gc")["blocks_freed"] == 0
    for ref, body in (("org/tagged", b"two" * 500), ("org/tagged@stable", b"two" * 500),
                      ("org/solo", b"alone" * 500)):
        assert run_cli(daemon.home, "cat", ref).stdout == body

    # With the tags moved away, it retires as before.
    cli_json(daemon.home, "tag", "org/tagged@1", "main")
    cli_json(daemon.home, "tag", "org/tagged@1", "stable")
    done = run_cli(daemon.home, "versions", "rm", "org/tagged@2").stdout.decode()
    assert done.strip() == f"retired org/tagged@2 (unpinned {v2['cid']})"


def test_versions_rm_force_retires_a_tagged_version_and_names_the_tags_left_on_it(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    v1 = _push(daemon, tmp_path, "org/forced", b"one" * 500)
    v2 = _push(daemon, tmp_path, "org/forced", b"two" * 500)
    text = run_cli(daemon.home, "versions", "rm", "--force", "org/forced@2").stdout.decode()
    assert text.strip() == (f"retired org/forced@2 (unpinned {v2['cid']}); tag main still "
                            "points at this retired version: move it with "
                            "`pinfold tag org/forced@N TAG`")
    assert _pinned(daemon) == {v1["cid"]}
    # Retiring it again is not refused (nothing more to lose) and still says so.
    again = cli_json(daemon.home, "versions", "rm", "org/forced@2")
    assert again["already_retired"] and again["tags"] == ["main"]
    assert run_cli(daemon.home, "names").stdout.decode().strip() == (
        "org/forced  v1  1 live version (1 retired)  main=2 (retired)")
    v3 = _push(daemon, tmp_path, "org/forced", b"three" * 500)
    with daemon.client() as c:
        res = c.retire("org/forced@3", force=True)
    assert res["tags"] == ["main"] and res["unpinned"] and res["cid"] == v3["cid"]
    assert _pinned(daemon) == {v1["cid"]}
    usage = run_cli(daemon.home, "versions", "--force", "org/forced", check=False)
    assert usage.returncode == EXIT_USAGE and b"--force goes with `versions rm" in usage.stderr


def test_pin_status_labels_a_versions_pin_name_at_number_as_pin_ls_does(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    v1 = _push(daemon, tmp_path, "org/st", b"first" * 500, "--tag", "stable")
    v2 = _push(daemon, tmp_path, "org/st", b"second" * 500)
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"first" * 500)
    assert cli_json(daemon.home, "add", str(mine), "--name", "mine")["cid"] == v1["cid"]
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"plain" * 500)
    other = cli_json(daemon.home, "add", str(plain), "--name", "plain")

    def name_line(cid: str) -> str:
        lines = run_cli(daemon.home, "pin", "status", cid).stdout.decode().splitlines()
        return next(line for line in lines if line.startswith("name: "))

    assert name_line(v1["cid"]) == "name: 'org/st@1' [stable] (pinned as 'mine')"
    assert name_line(v2["cid"]) == "name: 'org/st@2' [main]"
    assert name_line(other["cid"]) == "name: plain"  # not a version: its pin name
    ls = run_cli(daemon.home, "pin", "ls").stdout.decode()
    assert f"{v1['cid']} recursive pinned name='org/st@1' [stable] (pinned as 'mine')" in ls
    with daemon.client() as c:
        listed = {p["cid"]: p.get("versions") for p in c.pins()}
        for cid in (v1["cid"], v2["cid"]):
            assert c.status(cid)["versions"] == listed[cid]
        assert c.status(v2["cid"])["versions"] == [
            {"name": "org/st", "version": 2, "ref": "org/st@2", "tags": ["main"],
             "retired": False}]
        assert "versions" not in c.status(other["cid"])
    assert cli_json(daemon.home, "pin", "status", v2["cid"])["versions"][0]["ref"] == "org/st@2"
