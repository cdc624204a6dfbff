"""Named signing keys and grants on one real daemon: ``key gen``/``key ls``,
``push --key``, a key that was not granted is refused by name, a granted one
may move tags; a key file readable by others is refused."""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import DaemonProcess, cli_json, run_cli


def test_named_keys_publish_and_grants_decide_who_may_move_tags(daemon: DaemonProcess,
                                                                tmp_path: Path) -> None:
    alice = cli_json(daemon.home, "key", "gen", "alice")["id"]
    bob = cli_json(daemon.home, "key", "gen", "bob")["id"]
    assert alice.startswith("12D3KooW") and alice != bob
    keys = {k["name"]: k["id"] for k in cli_json(daemon.home, "key", "ls")["keys"]}
    assert set(keys) == {"self", "alice", "bob"} and keys["alice"] == alice
    again = run_cli(daemon.home, "key", "gen", "alice", check=False)
    assert again.returncode != 0 and b"exists already" in again.stderr

    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    pushed = cli_json(daemon.home, "push", "team/model", str(f), "--key", "alice")
    assert pushed["publisher"] == alice
    cli_json(daemon.home, "push", "team/model", str(f), "--key", "alice", "-m", "again")

    refused = run_cli(daemon.home, "tag", "team/model@1", "main", "--key", "bob", check=False)
    assert refused.returncode != 0
    assert f"key {bob} may not publish under 'team/model'".encode() in refused.stderr
    mine = run_cli(daemon.home, "tag", "team/model@1", "main", check=False)  # the node's key
    assert mine.returncode != 0 and b"may not publish" in mine.stderr

    run_cli(daemon.home, "name", "grant", "team/model", bob, "--key", "alice")
    cli_json(daemon.home, "tag", "team/model@1", "main", "--key", "bob")
    hist = cli_json(daemon.home, "versions", "team/model")
    assert hist["creator"] == alice and sorted(hist["publishers"]) == sorted([alice, bob])
    assert hist["versions"][1]["tags"] == ["main"]
    assert hist["versions"][0]["superseded"][0]["publisher"] == alice


def test_a_key_file_readable_by_others_is_refused(daemon: DaemonProcess,
                                                  tmp_path: Path) -> None:
    cli_json(daemon.home, "key", "gen", "loose")
    (daemon.home / "keys" / "loose.key").chmod(0o644)
    f = tmp_path / "x"
    f.write_bytes(b"x")
    out = run_cli(daemon.home, "push", "m", str(f), "--key", "loose", check=False)
    assert out.returncode != 0 and b"readable by others" in out.stderr
    missing = run_cli(daemon.home, "push", "m", str(f), "--key", "nokey", check=False)
    assert missing.returncode != 0 and b"pinfold key gen nokey" in missing.stderr
    # Refused before anything was added.
    with daemon.client() as c:
        assert list(c.pins()) == []
