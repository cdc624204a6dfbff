"""The HTTP gateway of a real daemon, read with curl: paths, folders, ranges,
HEAD, raw blocks, CARs (checked block by block by pinfold's CAR reader), each
error status, caching headers and the gateway's metrics.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pinfold.blockstore.car import CarReader
from pinfold.blockstore.cid import parse_cid, verify_block
from tests.support.curl import Reply, curl, need_curl
from tests.support.daemon import DaemonProcess, cli_json, metric, run_cli

MiB = 1024 * 1024
BIG = random.Random(7).randbytes(3 * MiB + 4321)  # 4 leaves of 1 MiB chunks
UNICODE_NAME = "notes & ü.txt"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A daemon holding a folder: files, a subfolder with a 3 MiB file, a web folder."""
    need_curl()
    root = tmp_path_factory.mktemp("gateway")
    src = root / "site"
    (src / "sub").mkdir(parents=True)
    (src / "www").mkdir()
    (src / "hello.txt").write_text("hello gateway\n")
    (src / "data.csv").write_text("a,b\n1,2\n")
    (src / "page").write_bytes(b"<!DOCTYPE html><title>sniffed</title><p>no extension")
    (src / UNICODE_NAME).write_text("unicode\n")
    (src / "sub" / "big.bin").write_bytes(BIG)
    (src / "www" / "index.html").write_text("<html><body><h1 id=w>welcome</h1></body></html>")
    d = DaemonProcess(root, "gw")
    d.start()
    try:
        out = cli_json(d.home, "add", "-r", str(src))
        with d.client() as c:
            url = c.id()["gateway"]
        yield {"daemon": d, "cid": out["cid"], "url": url, "src": src}
    finally:
        d.stop()
        d.kill9()


def get(site: dict[str, Any], path: str, *args: str) -> Reply:
    return curl(site["url"] + path, *args)


def file_cid(site: dict[str, Any], rel: str) -> str:
    return get(site, f"/ipfs/{site['cid']}/{rel}", "-I").header("x-ipfs-roots").split(",")[-1]


def read_car(body: bytes) -> tuple[tuple[Any, ...], list[Any]]:
    """Feed the CAR in 1000-byte pieces, as it would arrive: every block is checked
    against its CID by the reader as its section completes."""
    reader = CarReader()
    blocks = []
    for i in range(0, len(body), 1000):
        blocks += reader.feed(body[i:i + 1000])
    reader.finish()
    assert reader.roots is not None
    for cid, data in blocks:
        verify_block(cid, data)  # and once more here, explicitly
    return reader.roots, blocks


# ---------------------------------------------------------------------- paths


def test_id_reports_the_gateway_address(site: dict[str, Any]) -> None:
    assert site["url"].startswith("http://127.0.0.1:") and not site["url"].endswith(":0")
    out = run_cli(site["daemon"].home, "id").stdout.decode()
    assert f"gateway: {site['url']}" in out
    assert f"gateway listening on {site['url']}" in site["daemon"].log()


def test_file_by_path_has_type_length_etag_and_immutable_caching(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/hello.txt")
    assert r.status == 200 and r.body == b"hello gateway\n"
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.header("content-length") == str(len(r.body))
    assert r.header("cache-control") == "public, max-age=29030400, immutable"
    cid = r.header("x-ipfs-roots").split(",")[-1]
    assert r.header("etag") == f'"{cid}"'
    assert r.header("x-ipfs-path") == f"/ipfs/{site['cid']}/hello.txt"
    assert r.header("x-ipfs-roots").split(",")[0] == site["cid"]
    assert r.header("accept-ranges") == "bytes"


def test_content_type_from_name_then_from_bytes(site: dict[str, Any]) -> None:
    assert get(site, f"/ipfs/{site['cid']}/data.csv").header("content-type").startswith(
        "text/csv")
    page = get(site, f"/ipfs/{site['cid']}/page")
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert get(site, f"/ipfs/{site['cid']}/sub/big.bin").header(
        "content-type") == "application/octet-stream"


def test_big_file_streams_whole_and_equal(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/sub/big.bin")
    assert r.status == 200 and r.header("content-length") == str(len(BIG))
    assert hashlib.sha256(r.body).digest() == hashlib.sha256(BIG).digest()


def test_folder_without_slash_redirects_301_to_the_slash_form(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/sub?x=1")
    assert r.status == 301
    assert r.header("location") == f"/ipfs/{site['cid']}/sub/?x=1"
    assert get(site, f"/ipfs/{site['cid']}").header("location") == f"/ipfs/{site['cid']}/"
    # and a file asked for as a folder is sent to its slash-less URL
    r = get(site, f"/ipfs/{site['cid']}/hello.txt/?download=true")
    assert r.status == 301
    assert r.header("location") == f"/ipfs/{site['cid']}/hello.txt?download=true"


def test_folder_listing_shows_names_sizes_cids_and_links(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/")
    assert r.status == 200 and r.header("content-type") == "text/html; charset=utf-8"
    page = r.body.decode()
    for name in ("hello.txt", "data.csv", "sub/", "www/"):
        assert f'href="{name}"' in page, name
    assert f'href="{quote(UNICODE_NAME)}"' in page and "notes &amp; ü.txt" in page
    assert file_cid(site, "hello.txt") in page
    assert "14 B" in page  # hello.txt's size
    assert r.header("etag").startswith('"DirIndex-')
    sub = get(site, f"/ipfs/{site['cid']}/sub/").body.decode()
    assert 'href="../"' in sub and "3.0 MiB" in sub


def test_folder_with_index_html_serves_it(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/www/")
    assert r.status == 200 and b"welcome" in r.body
    assert r.header("content-type") == "text/html; charset=utf-8"


def test_percent_encoded_unicode_names_resolve(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/{quote(UNICODE_NAME)}")
    assert r.status == 200 and r.body == b"unicode\n"
    assert r.header("x-ipfs-path").isascii()


@pytest.mark.parametrize("how", ["", "?format=raw", "?format=car", "?format=car&dag-scope=block"])
def test_x_ipfs_path_is_percent_encoded_as_the_url_is(site: dict[str, Any], how: str) -> None:
    """A name with a space and UTF-8 shows in X-Ipfs-Path as in the URL path
    (RFC 3986 percent-encoding throughout), for every response type and for HEAD."""
    encoded = f"/ipfs/{site['cid']}/notes%20&%20%C3%BC.txt"
    for args in ((), ("-I",)):
        r = get(site, encoded + how, *args)
        assert r.status == 200, r.body
        assert r.header("x-ipfs-path") == encoded
    # the same name with '&' encoded too: the header is that of the decoded path
    other = f"/ipfs/{site['cid']}/notes%20%26%20%C3%BC.txt"
    assert get(site, other + how, "-I").header("x-ipfs-path") == encoded


# ---------------------------------------------------------------------- ranges and HEAD


@pytest.mark.parametrize(("spec", "start", "end"), [
    ("0-9", 0, 9),
    (f"{MiB - 5}-{MiB + 4}", MiB - 5, MiB + 4),  # across two leaves
    (f"{2 * MiB}-", 2 * MiB, len(BIG) - 1),
    ("-100", len(BIG) - 100, len(BIG) - 1),
    (f"10-{10 * MiB}", 10, len(BIG) - 1),  # end clamped
])
def test_range_is_206_with_content_range_and_only_those_bytes(
        site: dict[str, Any], spec: str, start: int, end: int) -> None:
    r = get(site, f"/ipfs/{site['cid']}/sub/big.bin", "-H", f"Range: bytes={spec}")
    assert r.status == 206
    assert r.header("content-range") == f"bytes {start}-{end}/{len(BIG)}"
    assert r.header("content-length") == str(end - start + 1)
    assert r.body == BIG[start:end + 1]


def test_unsatisfiable_range_is_416_naming_the_size(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/sub/big.bin", "-H", f"Range: bytes={len(BIG)}-")
    assert r.status == 416 and r.header("content-range") == f"bytes */{len(BIG)}"
    assert str(len(BIG)) in r.body.decode()


def test_head_gives_the_get_headers_without_a_body(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/sub/big.bin", "-I")
    assert r.status == 200 and r.body == b""
    assert r.header("content-length") == str(len(BIG))
    assert r.header("etag") and r.header("x-ipfs-roots")


def test_if_none_match_with_the_etag_is_304(site: dict[str, Any]) -> None:
    etag = get(site, f"/ipfs/{site['cid']}/hello.txt", "-I").header("etag")
    r = get(site, f"/ipfs/{site['cid']}/hello.txt", "-H", f"If-None-Match: {etag}")
    assert r.status == 304 and r.body == b"" and r.header("etag") == etag


# ---------------------------------------------------------------------- trustless


@pytest.mark.parametrize("how", [("?format=raw",), ("", "-H", "Accept: application/vnd.ipld.raw")])
def test_raw_block_matches_its_cid(site: dict[str, Any], how: tuple[str, ...]) -> None:
    r = get(site, f"/ipfs/{site['cid']}{how[0]}", *how[1:])
    assert r.status == 200 and r.header("content-type") == "application/vnd.ipld.raw"
    verify_block(parse_cid(site["cid"]), r.body)
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("etag") == f'"{site["cid"]}.raw"'
    assert r.header("cache-control") == "public, max-age=29030400, immutable"
    assert r.header("content-disposition") == f'attachment; filename="{site["cid"]}.bin"'


@pytest.mark.parametrize("how", [("?format=raw",), ("", "-H", "Accept: application/vnd.ipld.raw")])
@pytest.mark.parametrize("rel", ["hello.txt", "sub", "sub/big.bin"])
def test_raw_block_of_a_path_is_the_block_its_last_segment_names(
        site: dict[str, Any], how: tuple[str, ...], rel: str) -> None:
    """path-gateway "Raw Block" (Kubo, gateway-conformance TestGatewayBlock): the
    path is resolved and its last element's block is sent, with that block's ETag."""
    path = f"/ipfs/{site['cid']}/{quote(rel)}"
    r = get(site, path + how[0], *how[1:])
    assert r.status == 200, r.body
    roots = r.header("x-ipfs-roots").split(",")
    assert roots[0] == site["cid"] and len(roots) == 1 + rel.count("/") + 1
    target = roots[-1]
    verify_block(parse_cid(target), r.body)
    assert r.header("content-type") == "application/vnd.ipld.raw"
    assert r.header("content-length") == str(len(r.body))
    assert r.header("etag") == f'"{target}.raw"'
    assert r.header("x-ipfs-path") == path
    assert r.header("content-disposition") == f'attachment; filename="{target}.bin"'
    assert r.header("cache-control") == "public, max-age=29030400, immutable"
    assert r.header("x-content-type-options") == "nosniff"
    # asked by Accept alone: the URL that gives this response by itself
    assert r.header("content-location") == ("" if how[0] else path + "?format=raw")
    head = get(site, path + how[0], "-I", *how[1:])
    assert head.status == 200 and head.header("content-length") == str(len(r.body))


def test_raw_block_of_a_path_takes_a_range_and_a_filename(site: dict[str, Any]) -> None:
    path = f"/ipfs/{site['cid']}/sub/big.bin?format=raw"
    whole = get(site, path)
    part = get(site, path, "-H", "Range: bytes=2-9")
    assert part.status == 206 and part.body == whole.body[2:10]
    assert part.header("content-range") == f"bytes 2-9/{len(whole.body)}"
    assert part.header("etag") != whole.header("etag")
    past = get(site, path, "-H", f"Range: bytes={len(whole.body)}-")
    assert past.status == 416 and "format=raw" in past.body.decode()
    named = get(site, f"/ipfs/{site['cid']}/hello.txt?format=raw&filename=greeting.bin")
    assert named.header("content-disposition") == 'attachment; filename="greeting.bin"'


def test_car_of_a_path_sends_path_blocks_first_each_verified(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/sub/big.bin?format=car")
    assert r.status == 200
    assert r.header("content-type") == "application/vnd.ipld.car; version=1; order=dfs; dups=n"
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("cache-control") == "public, max-age=29030400, immutable"
    roots, blocks = read_car(r.body)
    assert [str(x) for x in roots] == [site["cid"]]
    path_roots = r.header("x-ipfs-roots").split(",")
    assert [str(c) for c, _ in blocks[:3]] == path_roots  # root dir, sub, file root
    assert len(blocks) == 3 + 4  # + 4 leaves
    data = b"".join(b for c, b in blocks if c.codec.name == "raw")
    assert data == BIG


def test_car_by_accept_header_equals_car_by_format(site: dict[str, Any]) -> None:
    by_accept = get(site, f"/ipfs/{site['cid']}/sub/", "-H", "Accept: application/vnd.ipld.car")
    by_format = get(site, f"/ipfs/{site['cid']}/sub/?format=car")
    assert by_accept.status == 200 and by_accept.body == by_format.body


def test_car_dag_scope_block_entity_and_all(site: dict[str, Any]) -> None:
    base = f"/ipfs/{site['cid']}/sub"
    _, block = read_car(get(site, f"{base}?format=car&dag-scope=block").body)
    _, entity = read_car(get(site, f"{base}?format=car&dag-scope=entity").body)
    _, everything = read_car(get(site, f"{base}?format=car&dag-scope=all").body)
    assert len(block) == 2  # root dir + sub
    assert len(entity) == 2  # a basic directory is one block
    assert len(everything) == 2 + 1 + 4  # + big.bin's root and leaves
    _, file_block = read_car(get(site, f"{base}/big.bin?format=car&dag-scope=block").body)
    assert len(file_block) == 3
    tags = {get(site, f"{base}?format=car&dag-scope={s}", "-I").header("etag")
            for s in ("block", "entity", "all")}
    assert len(tags) == 3


def test_car_entity_bytes_sends_only_the_blocks_of_the_range(site: dict[str, Any]) -> None:
    base = f"/ipfs/{site['cid']}/sub/big.bin?format=car"
    _, blocks = read_car(get(site, f"{base}&entity-bytes={MiB + 10}:{MiB + 20}").body)
    leaves = [b for c, b in blocks if c.codec.name == "raw"]
    assert len(blocks) == 3 + 1 and leaves == [BIG[MiB:2 * MiB]]
    _, tail = read_car(get(site, f"{base}&entity-bytes=-10:*").body)
    assert [b for c, b in tail if c.codec.name == "raw"] == [BIG[3 * MiB:]]
    outside = get(site, f"{base}&entity-bytes={10 * MiB}:*")
    assert outside.status == 400 and b"outside" in outside.body


@pytest.mark.parametrize("rel", ["sub/big.bin", "sub"])
def test_car_entity_bytes_with_from_after_to_is_400_naming_the_parameter(
        site: dict[str, Any], rel: str) -> None:
    """``10:5`` is an invalid range (RFC 9110 14.1.1, Kubo): 400 before any CAR is
    sent, for a file and for a folder (where a valid range would be ignored)."""
    r = get(site, f"/ipfs/{site['cid']}/{rel}?format=car&entity-bytes=10:5")
    assert r.status == 400, r.body
    text = r.body.decode()
    assert "entity-bytes='10:5'" in text and "after TO" in text and text.count("\n") == 1
    # a pair that resolves empty against the size is still answered as dag-scope=block
    empty = get(site, f"/ipfs/{site['cid']}/sub/big.bin?format=car"
                      f"&entity-bytes={len(BIG) - 10}:-20")
    assert empty.status == 200
    assert len(read_car(empty.body)[1]) == 3  # root dir, sub, the file's root block


def test_car_of_a_dag_has_the_blocks_of_dag_export(site: dict[str, Any]) -> None:
    d = site["daemon"]
    exported = run_cli(d.home, "dag", "export", site["cid"]).stdout
    _, want = read_car(exported)
    _, got = read_car(get(site, f"/ipfs/{site['cid']}?format=car").body)
    assert [c for c, _ in got] == [c for c, _ in want]


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(("path", "args", "status", "says"), [
    ("/ipfs/notacid/x", (), 400, "'notacid' is not a CID"),
    ("/ipfs/{cid}/missing.txt", (), 404, "no entry 'missing.txt'"),
    ("/ipfs/{cid}/hello.txt/deeper", (), 404, "not a directory"),
    ("/ipfs/{cid}", ("-X", "POST"), 405, "read-only"),
    ("/ipfs/{cid}", ("-X", "DELETE"), 405, "read-only"),
    ("/ipns/example.com", (), 404, "no name 'example.com'"),
    ("/", (), 404, "/ipfs/{cid}"),
    ("/ipfs/{cid}?format=tar", (), 400, "format='tar' is not supported"),
    ("/ipfs/{cid}/missing.txt?format=raw", (), 404, "no entry 'missing.txt'"),
    ("/ipfs/{cid}?format=car&dag-scope=most", (), 400, "dag-scope"),
    ("/ipfs/{cid}", ("-H", "Accept: application/vnd.ipld.car; version=2"), 400, "version 2"),
])
def test_each_error_is_its_status_with_a_short_message(
        site: dict[str, Any], path: str, args: tuple[str, ...], status: int, says: str) -> None:
    r = get(site, path.replace("{cid}", site["cid"]), *args)
    assert r.status == status, r.body
    text = r.body.decode()
    assert says in text and "Traceback" not in text and text.count("\n") == 1
    if status == 405:
        assert r.header("allow") == "GET, HEAD, OPTIONS"


def test_errors_are_json_when_the_client_asks(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/nope", "-H", "Accept: application/json")
    assert r.status == 404 and r.header("content-type") == "application/json"
    body = json.loads(r.body)
    assert body["status"] == 404 and "nope" in body["message"]


def test_headers_over_the_limit_are_431(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/hello.txt", "-H", "X-Filler: " + "a" * 20000)
    assert r.status == 431 and b"max_header_bytes" in r.body
    assert get(site, f"/ipfs/{site['cid']}/hello.txt").status == 200  # still serving


def test_options_lists_the_allowed_methods(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/", "-X", "OPTIONS")
    assert r.status == 204 and r.header("allow") == "GET, HEAD, OPTIONS"


# ---------------------------------------------------------------------- metrics


def test_metrics_count_requests_by_route_and_status_bytes_and_ttfb(site: dict[str, Any]) -> None:
    d: DaemonProcess = site["daemon"]
    before_ok = metric(d, "pinfold_gateway_requests_total", route="file", status="200")
    before_404 = metric(d, "pinfold_gateway_requests_total", route="error", status="404")
    before_bytes = metric(d, "pinfold_gateway_bytes_total")
    before_ttfb = metric(d, "pinfold_gateway_time_to_first_byte_seconds_count")
    assert get(site, f"/ipfs/{site['cid']}/sub/big.bin").status == 200
    assert get(site, f"/ipfs/{site['cid']}/nothing").status == 404
    assert metric(d, "pinfold_gateway_requests_total", route="file",
                  status="200") == before_ok + 1
    assert metric(d, "pinfold_gateway_requests_total", route="error",
                  status="404") == before_404 + 1
    assert metric(d, "pinfold_gateway_bytes_total") >= before_bytes + len(BIG)
    assert metric(d, "pinfold_gateway_time_to_first_byte_seconds_count") == before_ttfb + 2



def test_only_if_cached_for_a_block_not_held_is_412(site: dict[str, Any]) -> None:
    from pinfold.blockstore.cid import make_cid

    absent = make_cid(b"not on this node")
    r = get(site, f"/ipfs/{absent}", "-H", "Cache-Control: only-if-cached")
    assert r.status == 412 and str(absent) in r.body.decode()
    held = get(site, f"/ipfs/{site['cid']}/hello.txt", "-H", "Cache-Control: only-if-cached")
    assert held.status == 200


def test_a_dag_cbor_node_is_406_as_a_file_but_served_raw_and_as_car(
        site: dict[str, Any]) -> None:
    from pinfold.blockstore.dag import cbor_encode

    leaf = parse_cid(file_cid(site, "hello.txt"))
    with site["daemon"].client() as c:
        cid = c.block_put(cbor_encode({"name": "meta", "file": leaf}), codec="dag-cbor")["cid"]
    r = get(site, f"/ipfs/{cid}")
    assert r.status == 406 and "dag-cbor, not UnixFS" in r.body.decode()
    raw = get(site, f"/ipfs/{cid}?format=raw")
    verify_block(parse_cid(cid), raw.body)
    _, blocks = read_car(get(site, f"/ipfs/{cid}?format=car").body)
    assert [str(b) for b, _ in blocks] == [cid, str(leaf)]  # dag-scope=all follows the link
    _, one = read_car(get(site, f"/ipfs/{cid}?format=car&dag-scope=entity").body)
    assert [str(b) for b, _ in one] == [cid]  # not UnixFS: entity is the block


def test_hamt_sharded_folder_by_js_lists_resolves_and_exports_its_shards(
        site: dict[str, Any], tmp_path: Path) -> None:
    import base64

    from pinfold.blockstore.car import car_header, car_section

    vec = json.loads((Path(__file__).parents[1] / "vectors" / "hamt_js.json").read_text())
    root = vec["root"]
    blocks = {parse_cid(k): base64.b64decode(v) for k, v in vec["blocks"].items()}
    car = tmp_path / "hamt.car"
    car.write_bytes(car_header([parse_cid(root)])
                    + b"".join(car_section(c, d) for c, d in blocks.items()))
    run_cli(site["daemon"].home, "dag", "import", str(car))
    listing = get(site, f"/ipfs/{root}/")
    assert listing.status == 200
    page = listing.body.decode()
    assert all(f'href="file-{i}.txt"' in page for i in range(600))
    r = get(site, f"/ipfs/{root}/file-299.txt")
    assert r.status == 200 and r.body == b"hello 299\n"
    assert len(r.header("x-ipfs-roots").split(",")) == 2  # one CID per path segment
    _, path_car = read_car(get(site, f"/ipfs/{root}/file-299.txt?format=car").body)
    assert len(path_car) >= 3 and path_car[-1][1] == b"hello 299\n"  # shards on the way
    _, entity = read_car(get(site, f"/ipfs/{root}?format=car&dag-scope=entity").body)
    # The vector keys every block by a raw CID of its digest; 600 are the files.
    assert all(c.codec.name == "dag-pb" for c, _ in entity)
    assert len(entity) == len(blocks) - 600 > 1  # the root and every sub-shard, no file


def test_filename_and_download_set_content_disposition(site: dict[str, Any]) -> None:
    r = get(site, f"/ipfs/{site['cid']}/hello.txt?filename=greeting.txt&download=true")
    assert r.header("content-disposition") == (
        "attachment; filename=\"greeting.txt\"; filename*=UTF-8''greeting.txt")
    inline = get(site, f"/ipfs/{site['cid']}/hello.txt?filename={quote('grüße.txt')}")
    assert inline.header("content-disposition").startswith('inline; filename="gr??e.txt"')
    assert "filename*=UTF-8''gr%C3%BC%C3%9Fe.txt" in inline.header("content-disposition")
    assert get(site, f"/ipfs/{site['cid']}/hello.txt").header("content-disposition") == ""


def test_a_block_missing_mid_car_cuts_the_stream_short(site: dict[str, Any]) -> None:
    """Once a CAR's first bytes are out the status is sent: a child that cannot be
    had ends the stream early, and the client's CAR reader sees it incomplete."""
    import subprocess

    from pinfold.blockstore.cid import make_cid
    from pinfold.blockstore.dag import cbor_encode

    big = random.Random(11).randbytes(MiB)
    missing = make_cid(b"a child nobody has")
    with site["daemon"].client() as c:
        held = c.block_put(big)["cid"]
        root = c.block_put(cbor_encode({"a": parse_cid(held), "b": missing}),
                           codec="dag-cbor")["cid"]
    proc = subprocess.run([need_curl(), "-sS", "-D", "-", "-o", "-",
                           f"{site['url']}/ipfs/{root}?format=car"],
                          capture_output=True, timeout=60)
    assert proc.returncode != 0  # curl saw the body end before its end
    assert proc.stdout.startswith(b"HTTP/1.1 200 OK")
    body = proc.stdout.partition(b"\r\n\r\n")[2]
    reader = CarReader()
    got = [str(cid) for cid, _ in reader.feed(body)]
    assert got[:2] == [root, held] and str(missing) not in got
    assert "response cut after" in site["daemon"].log()
