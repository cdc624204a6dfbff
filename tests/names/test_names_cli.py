"""The names commands as a user types them, on one real daemon: ``versions rm``
run twice changes nothing the second time and says what is pinned;
``versions NAME@N`` shows that version; ``versions`` labels versions by
their tags and retirement; ``tag`` refuses a ref without a version
and a retired version;
``push`` of a missing path exits as ``add`` does, and with its arguments
swapped says the order; ``pin ls`` hides the pins of
name records unless ``--all``; ``names`` shows the newest live version and
counts live versions apart from retired ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pinfold.client import RpcError
from pinfold.daemon.cli.format import EXIT_ERROR, EXIT_USAGE
from tests.support.daemon import DaemonProcess, cli_json, run_cli


def _records(d: DaemonProcess, kind: str) -> list[str]:
    """Names of the record pins of ``kind`` (``retire 1``...) on ``d``."""
    with d.client() as c:
        return sorted(p["name"] for p in c.pins(records=True)
                      if p.get("name", "").startswith("name:") and kind in p["name"])


def test_versions_rm_twice_adds_one_retire_record_and_says_what_is_pinned(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"first" * 1000)
    b.write_bytes(b"second" * 1000)
    v1 = cli_json(daemon.home, "push", "org/rm", str(a))
    v2 = cli_json(daemon.home, "push", "org/rm", str(b))
    v3 = cli_json(daemon.home, "push", "org/rm", str(b), "-m", "same bytes as 2")
    assert v2["cid"] == v3["cid"] != v1["cid"]

    first = run_cli(daemon.home, "versions", "rm", "org/rm@1").stdout.decode()
    assert first.strip() == f"retired org/rm@1 (unpinned {v1['cid']})"
    again = run_cli(daemon.home, "versions", "rm", "org/rm@1").stdout.decode()
    assert again.strip() == f"org/rm@1 was already retired ({v1['cid']} is not pinned)"
    assert _records(daemon, "retire 1") == ["name:org/rm retire 1"]

    # Version 3 has version 2's root: retiring 2 keeps it pinned, and says so.
    shared = run_cli(daemon.home, "versions", "rm", "org/rm@2").stdout.decode()
    assert shared.strip() == (f"retired org/rm@2 ({v2['cid']} stays pinned: version 3 "
                              "has the same root)")
    doc = cli_json(daemon.home, "versions", "rm", "org/rm@2")
    assert doc["already_retired"] and doc["pinned"] and not doc["unpinned"]
    assert doc["shared_with"] == [3]
    assert _records(daemon, "retire 2") == ["name:org/rm retire 2"]
    with daemon.client() as c:
        assert c.status(v2["cid"])["cid"] == v2["cid"]
    hist = cli_json(daemon.home, "versions", "org/rm")["versions"]
    assert [v["retired"] for v in hist] == [False, True, True]


def test_versions_of_name_at_ref_shows_only_that_version(daemon: DaemonProcess,
                                                         tmp_path: Path) -> None:
    """``versions NAME@1`` answers about version 1 (and ``@TAG`` about the version
    the tag names); ``NAME`` alone is the whole history."""
    f = tmp_path / "w.bin"
    for n in (1, 2, 3):
        f.write_bytes(f"weights {n}".encode())
        cli_json(daemon.home, "push", "org/hist", str(f), "-m", f"cut {n}")
    run_cli(daemon.home, "tag", "org/hist@2", "stable")
    assert [v["version"] for v in cli_json(daemon.home, "versions", "org/hist")["versions"]
            ] == [3, 2, 1]
    one = cli_json(daemon.home, "versions", "org/hist@1")
    assert one["name"] == "org/hist" and [v["version"] for v in one["versions"]] == [1]
    assert one["versions"][0]["message"] == "cut 1"
    stable = cli_json(daemon.home, "versions", "org/hist@stable")["versions"]
    assert [(v["version"], v["tags"]) for v in stable] == [(2, ["stable"])]
    text = run_cli(daemon.home, "versions", "org/hist@1").stdout.decode()
    assert "cut 1" in text and "cut 2" not in text and "cut 3" not in text
    missing = run_cli(daemon.home, "versions", "org/hist@9", check=False)
    assert missing.returncode == 4 and b"org/hist has no version 9" in missing.stderr
    path = run_cli(daemon.home, "versions", "org/hist@1/w.bin", check=False)
    assert path.returncode != 0 and b"not a path inside a version" in path.stderr


def test_versions_labels_say_tags_and_retirement_not_superseded(daemon: DaemonProcess,
                                                                  tmp_path: Path) -> None:
    """An older version that ``main`` moved past is just a version: its line shows
    its tags (if any), never "superseded"; a retired one says whether its root is
    still pinned."""
    f = tmp_path / "w.bin"
    for n in (1, 2, 3, 3):  # version 4 has version 3's bytes, so its root
        f.write_bytes(f"weights {n}".encode() * 100)
        cli_json(daemon.home, "push", "org/labels", str(f), "-m", f"cut {n}")
    run_cli(daemon.home, "tag", "org/labels@1", "stable")
    run_cli(daemon.home, "versions", "rm", "org/labels@2")
    run_cli(daemon.home, "versions", "rm", "org/labels@3")
    text = run_cli(daemon.home, "versions", "org/labels").stdout.decode()
    lines = text.splitlines()
    assert len(lines) == 5, text  # the header and one line per version
    head = [line.split("  bafk")[0].strip() for line in lines[1:]]
    assert head == ["4 [main]", "3 retired (root still pinned)", "2 retired (not pinned)",
                    "1 [stable]"]
    assert "superseded" not in text and "was main" not in text
    hist = cli_json(daemon.home, "versions", "org/labels")["versions"]
    # The JSON keeps the history of main's moves, saying each simply moved on.
    assert [(s["tag"], s["moved_to"], s["concurrent"]) for s in hist[3]["superseded"]] == [
        ("main", 2, False)]


def test_tag_without_a_version_is_refused_and_moves_nothing(daemon: DaemonProcess,
                                                            tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    for n in (1, 2):
        f.write_bytes(f"weights {n}".encode())
        cli_json(daemon.home, "push", "org/tags", str(f))
    bare = run_cli(daemon.home, "tag", "org/tags", "stable", check=False)
    assert bare.returncode == 2, bare.stderr
    err = bare.stderr.decode()
    assert "pinfold tag org/tags@1 stable" in err and "Traceback" not in err
    with daemon.client() as c, pytest.raises(RpcError) as refused:
        c.tag("org/tags", "stable")  # the daemon refuses it too (Python client users)
    assert refused.value.code == "invalid_name" and "NAME@VERSION" in str(refused.value)
    path = run_cli(daemon.home, "tag", "org/tags@1/w.bin", "stable", check=False)
    assert path.returncode != 0 and b"tag needs the version" in path.stderr
    hist = cli_json(daemon.home, "versions", "org/tags")["versions"]
    assert [v["tags"] for v in hist] == [["main"], []]  # nothing moved
    cli_json(daemon.home, "tag", "org/tags@1", "stable")
    cli_json(daemon.home, "tag", "org/tags@stable", "lts")  # a tag names a version too
    hist = cli_json(daemon.home, "versions", "org/tags")["versions"]
    assert [v["tags"] for v in hist] == [["main"], ["lts", "stable"]]


def test_tag_of_a_retired_version_is_refused(daemon: DaemonProcess, tmp_path: Path) -> None:
    f = tmp_path / "r.bin"
    for n in (1, 2):
        f.write_bytes(f"retired {n}".encode())
        cli_json(daemon.home, "push", "org/ret", str(f))
    run_cli(daemon.home, "versions", "rm", "org/ret@1")
    refused = run_cli(daemon.home, "tag", "org/ret@1", "main", check=False)
    assert refused.returncode == EXIT_ERROR, refused.stderr
    assert b"org/ret@1 is retired" in refused.stderr and b"Traceback" not in refused.stderr
    with daemon.client() as c:
        assert c.resolve("org/ret@main") == c.resolve("org/ret@2")


def test_push_and_add_of_a_missing_path_exit_alike(daemon: DaemonProcess,
                                                   tmp_path: Path) -> None:
    """Both exit 1 (a missing input file, README "Exit codes") naming the path,
    and push publishes nothing."""
    gone = str(tmp_path / "no-such-model")
    add = run_cli(daemon.home, "add", gone, check=False)
    push = run_cli(daemon.home, "push", "org/gone", gone, check=False)
    assert add.returncode == push.returncode == EXIT_ERROR
    assert add.stderr == push.stderr == f"pinfold: error: {gone}: no such file or directory\n".encode()
    pj = run_cli(daemon.home, "--json", "push", "org/gone", gone, check=False)
    aj = run_cli(daemon.home, "--json", "add", gone, check=False)
    assert pj.stderr == aj.stderr and b'"exit": 1' in pj.stderr
    assert cli_json(daemon.home, "names")["names"] == []


def test_push_with_path_and_name_swapped_says_the_order(daemon: DaemonProcess,
                                                       tmp_path: Path) -> None:
    """``push ./model org/m``: org/m is no file but ./model is one, so the error
    says the order (usage, exit 2) and nothing is published."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"weights")
    swapped = run_cli(daemon.home, "push", str(model), "org/swapped", check=False)
    assert swapped.returncode == EXIT_USAGE, swapped.stderr
    err = swapped.stderr.decode()
    assert "the order is `pinfold push NAME PATH`" in err
    assert f"`pinfold push org/swapped {model}`" in err and "Traceback" not in err
    assert cli_json(daemon.home, "names")["names"] == []
    assert cli_json(daemon.home, "push", "org/swapped", str(model))["version"] == 1


def test_pin_ls_hides_name_record_pins_unless_all(daemon: DaemonProcess,
                                                  tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 100)
    v1 = cli_json(daemon.home, "push", "org/listed", str(f), "--tag", "stable")
    plain = run_cli(daemon.home, "pin", "ls").stdout.decode().splitlines()
    assert plain == [f"{v1['cid']} recursive pinned name='org/listed@1' [main, stable]"]
    everything = run_cli(daemon.home, "pin", "ls", "--all").stdout.decode()
    assert "name='org/listed@1' [main, stable]" in everything
    assert "name='name:org/listed version 1'" in everything
    assert "name='name:org/listed tag stable'" in everything
    lines = run_cli(daemon.home, "--json", "pin", "ls", "--all").stdout.decode().splitlines()
    assert len(lines) == len(everything.splitlines()) > 3
    with daemon.client() as c:
        assert [p["cid"] for p in c.pins()] == [v1["cid"]]
        assert len(list(c.pins(records=True))) == len(lines)
        assert [p["cid"] for p in c.pins(state="pinned")] == [v1["cid"]]


def test_names_shows_the_newest_live_version_and_counts_only_live_ones(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    for n in (1, 2, 3):
        f.write_bytes(f"weights {n}".encode() * 100)
        cli_json(daemon.home, "push", "org/count", str(f))
    cli_json(daemon.home, "push", "org/plain", str(f))
    f.write_bytes(b"only one")
    cli_json(daemon.home, "push", "org/zero", str(f))
    cli_json(daemon.home, "tag", "org/count@2", "main")
    run_cli(daemon.home, "versions", "rm", "org/count@3")
    run_cli(daemon.home, "versions", "rm", "--force", "org/zero@1")

    lines = run_cli(daemon.home, "names").stdout.decode().splitlines()
    assert lines == ["org/count  v2  2 live versions (1 retired)  main=2",
                     "org/plain  v1  1 version  main=1",
                     "org/zero  no live version (1 retired)  main=1 (retired)"]
    by_name = {n["name"]: n for n in cli_json(daemon.home, "names")["names"]}
    assert [(by_name[x]["latest"], by_name[x]["versions"], by_name[x]["retired"],
             by_name[x]["retired_tags"]) for x in ("org/count", "org/plain", "org/zero")] == [
        (2, 2, 1, []), (1, 1, 0, []), (None, 0, 1, ["main"])]
    with daemon.client() as c:  # the version listed is the one the bare name resolves to
        assert c.resolve("org/count") == c.resolve("org/count@2")
        assert [n["latest"] for n in c.names()] == [2, 1, None]
