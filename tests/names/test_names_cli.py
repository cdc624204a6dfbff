"""The names commands as a user types them, on one real daemon: ``versions rm``
run twice changes nothing the second time and says what is pinned;
``versions NAME@N`` shows that version; ``tag`` refuses a ref without a version;
``push`` of a missing path exits as ``add`` does.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import DaemonProcess, cli_json, run_cli


def _records(d: DaemonProcess, kind: str) -> list[str]:
    """Names of the record pins of ``kind`` (``retire 1``...) on ``d``."""
    with d.client() as c:
        return sorted(p["name"] for p in c.pins()
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
