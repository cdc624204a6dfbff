"""Names where users read content: the HTTP gateway's ``/ipns/NAME@REF/path``
(curl), fsspec ``pinfold://NAME@main/file.csv`` (pandas) and ``pinfold ls NAME@main``,
against one real daemon holding two versions of a folder.

``/ipns/`` is served like the ``/ipfs/`` path it resolves to; ``X-Ipfs-Path``
shows the ``/ipns/`` path, and ``Cache-Control`` is immutable only for a version
number (a tag moves, so its responses are cached briefly).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pandas
import pytest

from tests.support.curl import Reply, curl, need_curl
from tests.support.daemon import DaemonProcess, run_cli

NAME = "org/data"
CSV1 = b"name,size\nalpha,1\n"
CSV2 = b"name,size\nalpha,1\nbeta,22\n"
IMMUTABLE = "public, max-age=29030400, immutable"
SHORT = "public, max-age=60"


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    need_curl()
    root = tmp_path_factory.mktemp("names-gw")
    src = root / "data"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "notes.txt").write_text("notes\n")
    (src / "sub" / "a@b.txt").write_text("at\n")
    d = DaemonProcess(root, "gw").start()
    try:
        with d.client() as c:
            (src / "file.csv").write_bytes(CSV1)
            v1 = c.push(NAME, src, tags=["stable"])
            (src / "file.csv").write_bytes(CSV2)
            v2 = c.push(NAME, src)
            url = c.id()["gateway"]
            sock = str(c.socket_path)
        yield {"daemon": d, "url": url, "v1": v1, "v2": v2, "socket": sock}
    finally:
        try:
            d.stop()
        finally:
            d.kill9()


def get(named: dict[str, Any], path: str, *args: str) -> Reply:
    return curl(named["url"] + path, *args)


@pytest.mark.parametrize(("ref", "body", "cache"), [
    (f"{NAME}@main", CSV2, SHORT),
    (NAME, CSV2, SHORT),
    (f"{NAME}@stable", CSV1, SHORT),
    (f"{NAME}@1", CSV1, IMMUTABLE),
    (f"{NAME}@2", CSV2, IMMUTABLE),
])
def test_ipns_name_ref_serves_the_version_with_its_path_and_caching(
        named: dict[str, Any], ref: str, body: bytes, cache: str) -> None:
    r = get(named, f"/ipns/{ref}/file.csv")
    assert r.status == 200, r.body
    assert r.body == body
    assert r.header("x-ipfs-path") == f"/ipns/{ref}/file.csv"
    assert r.header("cache-control") == cache
    assert r.header("content-type").startswith("text/csv")


@pytest.mark.parametrize("path", ["sub/a@b.txt", "sub/notes.txt"])
def test_ipns_bare_name_takes_the_longest_known_name_then_the_path(
        named: dict[str, Any], path: str) -> None:
    r = get(named, f"/ipns/{NAME}/{path}")
    assert r.status == 200, r.body
    assert r.header("x-ipfs-path") == f"/ipns/{NAME}/{path}"


def test_ipns_folder_redirects_to_its_slash_form_then_lists(named: dict[str, Any]) -> None:
    r = get(named, f"/ipns/{NAME}@main")
    assert r.status == 301 and r.header("location") == f"/ipns/{NAME}@main/"
    assert r.header("cache-control") == SHORT
    r = get(named, f"/ipns/{NAME}@main/")
    assert r.status == 200 and b"file.csv" in r.body and b"sub" in r.body
    assert r.header("x-ipfs-path") == f"/ipns/{NAME}@main"


def test_ipns_range_and_etag_work_as_on_ipfs(named: dict[str, Any]) -> None:
    r = get(named, f"/ipns/{NAME}@2/file.csv", "-H", "Range: bytes=5-8")
    assert r.status == 206 and r.body == CSV2[5:9]
    etag = get(named, f"/ipns/{NAME}@2/file.csv", "-I").header("etag")
    r = get(named, f"/ipns/{NAME}@main/file.csv", "-H", f"If-None-Match: {etag}")
    assert r.status == 304 and r.header("cache-control") == SHORT


@pytest.mark.parametrize(("path", "status", "says"), [
    ("/ipns/no/such", 404, "no name 'no/such'"),
    (f"/ipns/{NAME}@9/file.csv", 404, "no version 9"),
    (f"/ipns/{NAME}@nope/file.csv", 404, "no tag 'nope'"),
    (f"/ipns/{NAME}@main/missing.csv", 404, "no entry 'missing.csv'"),
    # the user's /ipns/ path is named, not the CID it resolved to
    (f"/ipns/{NAME}@2/sub/nope", 404,
     f"/ipns/{NAME}@2/sub/nope: no entry 'nope' in /ipns/{NAME}@2/sub"),
    (f"/ipns/{NAME}/file.csv/deeper", 404,
     f"/ipns/{NAME}/file.csv/deeper: no entry 'deeper' in /ipns/{NAME}/file.csv "
     "(not a directory)"),
    (f"/ipns/{NAME}@1/file.csv?format=car&entity-bytes=999:*", 400,
     f"/ipns/{NAME}@1/file.csv: entity-bytes=999:* lies outside"),
    (f"/ipns/{NAME}@/file.csv", 400, "nothing after '@'"),
])
def test_ipns_errors_name_the_problem(named: dict[str, Any], path: str, status: int,
                                      says: str) -> None:
    r = get(named, path)
    assert r.status == status, r.body
    text = r.body.decode()
    assert says in text and "Traceback" not in text
    assert "/ipfs/" not in text  # never the CID the name resolved to


def test_ipns_x_ipfs_path_is_percent_encoded_as_the_url_is(named: dict[str, Any],
                                                           tmp_path: Any) -> None:
    folder = tmp_path / "spaced"
    folder.mkdir()
    (folder / "read me ü.txt").write_text("hi\n")
    with named["daemon"].client() as c:
        c.push("org/spaced", folder)
    encoded = "/ipns/org/spaced@1/read%20me%20%C3%BC.txt"
    r = get(named, encoded)
    assert r.status == 200 and r.body == b"hi\n"
    assert r.header("x-ipfs-path") == encoded


def test_pandas_reads_a_csv_by_name_through_fsspec(named: dict[str, Any]) -> None:
    df = pandas.read_csv(f"pinfold://{NAME}@main/file.csv",
                         storage_options={"socket": named["socket"]})
    assert df["name"].tolist() == ["alpha", "beta"] and df["size"].tolist() == [1, 22]
    df1 = pandas.read_csv(f"pinfold://{NAME}@1/file.csv",
                          storage_options={"socket": named["socket"]})
    assert df1["name"].tolist() == ["alpha"]


@pytest.mark.parametrize(("ref", "says"), [
    (f"{NAME}@99", "no version 99"),
    (f"{NAME}@nope", "no tag 'nope'"),
    (f"{NAME}@2/sub/missing", "no entry 'missing'"),
])
def test_fsspec_missing_version_tag_or_path_is_file_not_found_naming_it(
        named: dict[str, Any], ref: str, says: str) -> None:
    """A ``NAME@REF`` that does not exist is missing like a path: each fsspec call
    raises FileNotFoundError (never the client's RpcError) saying what is missing,
    its ``filename`` the path asked for; ``exists`` and ``isfile`` are False."""
    import fsspec

    fs = fsspec.filesystem("pinfold", socket=named["socket"])
    for path in (ref, f"{ref}/file.csv"):
        url = f"pinfold://{path}"
        for call in (fs.info, fs.ls, fs.cat_file, lambda u: fs.open(u).read()):
            with pytest.raises(FileNotFoundError) as info:
                call(url)
            assert says in str(info.value) and info.value.filename == path, call
        assert fs.exists(url) is False and fs.isfile(url) is False
    with pytest.raises(FileNotFoundError, match=says):
        pandas.read_csv(f"pinfold://{ref}/file.csv",
                        storage_options={"socket": named["socket"]})


def test_ls_lists_a_folder_by_name(named: dict[str, Any]) -> None:
    out = run_cli(named["daemon"].home, "--json", "ls", f"{NAME}@main").stdout.decode()
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    names = sorted(e["name"] for e in entries)
    assert names == ["file.csv", "sub"]
    sizes = {e["name"]: e["size"] for e in entries}
    assert sizes["file.csv"] == len(CSV2)


def test_fsspec_reads_a_bare_name_with_a_path_at_main(named: dict[str, Any],
                                                      tmp_path: Any) -> None:
    """``pinfold://NAME/path`` (no ``@``): the name is the longest run of leading
    parts that is a known name, read at ``main``; the CLI takes it too."""
    import fsspec

    opts = {"socket": named["socket"]}
    df = pandas.read_csv(f"pinfold://{NAME}/file.csv", storage_options=opts)
    assert df["name"].tolist() == ["alpha", "beta"]  # main is version 2
    fs = fsspec.filesystem("pinfold", socket=named["socket"])
    assert fs.ls(f"pinfold://{NAME}/sub", detail=False) == [f"{NAME}/sub/a@b.txt",
                                                             f"{NAME}/sub/notes.txt"]
    assert fs.cat_file(f"pinfold://{NAME}/sub/notes.txt") == b"notes\n"
    assert fs.cat_file(f"pinfold://{NAME}/sub/a@b.txt") == b"at\n"  # what ls listed
    assert fs.info(f"pinfold://{NAME}/sub/notes.txt")["cid"] == fs.info(
        f"pinfold://{NAME}@main/sub/notes.txt")["cid"]

    # Names may hold '/': org/nest and org/nest/inner both exist; the longer wins,
    # and main is where it points, not the newest version.
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    (outer / "inner").mkdir(parents=True)
    (outer / "inner" / "f.txt").write_text("outer's\n")
    inner.mkdir()
    with named["daemon"].client() as c:
        c.push("org/nest", outer)
        for text in ("inner 1\n", "inner 2\n"):
            (inner / "f.txt").write_text(text)
            c.push("org/nest/inner", inner)
        c.tag("org/nest/inner@1", "main")
    assert fs.cat_file("pinfold://org/nest/inner/f.txt") == b"inner 1\n"
    assert fs.cat_file("pinfold://org/nest@main/inner/f.txt") == b"outer's\n"
    cat = run_cli(named["daemon"].home, "cat", f"{NAME}/file.csv").stdout
    assert cat == CSV2


def test_fsspec_bare_path_of_no_known_name_is_not_found_suggesting_a_ref(
        named: dict[str, Any]) -> None:
    import fsspec

    from pinfold.fsspec import NameOrCIDNotFound

    fs = fsspec.filesystem("pinfold", socket=named["socket"])
    url = "pinfold://org/nope/file.csv"
    for call in (fs.info, fs.cat_file, lambda u: fs.open(u).read()):
        with pytest.raises(FileNotFoundError) as info:
            call(url)
        err = info.value
        assert isinstance(err, NameOrCIDNotFound) and isinstance(err, ValueError)
        assert err.filename == "org/nope/file.csv"
        assert str(err).count(url) == 1 and "NAME@REF/path" in str(err)
        assert "'org' is not a CID" in str(err)
    assert fs.exists(url) is False
    with pytest.raises(FileNotFoundError, match="NAME@REF/path"):
        pandas.read_csv(url, storage_options={"socket": named["socket"]})
