"""A real browser on the gateway: Debian's headless Chromium loads a folder
listing (through Kubo's trailing-slash redirect), follows its links to a
file, and runs the script of a served ``index.html``. Skipped with the reason
where Chromium is not installed (``make test`` installs it where apt works).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, cli_json


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (apt-get install chromium; `make test` does it "
                "as root where apt works)")


def dump_dom(url: str, profile: Path) -> str:
    """The DOM after load, as ``chromium --headless --dump-dom`` prints it."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    chromium()
    root = tmp_path_factory.mktemp("browser")
    src = root / "folder"
    (src / "app").mkdir(parents=True)
    (src / "readme.txt").write_text("plain text from pinfold\n")
    (src / "app" / "index.html").write_text(
        "<!DOCTYPE html><html><body><p id=out>static</p>"
        "<script>document.getElementById('out').textContent = 'script ran ' + (6 * 7)"
        "</script></body></html>")
    with DaemonProcess(root, "gw") as d:
        cid = cli_json(d.home, "add", "-r", str(src))["cid"]
        with d.client() as c:
            yield {"url": c.id()["gateway"], "cid": cid, "profile": root / "profile"}


def test_browser_loads_a_folder_listing_and_follows_a_link_to_a_file(
        served: dict[str, Any]) -> None:
    base = f"{served['url']}/ipfs/{served['cid']}"
    dom = dump_dom(base, served["profile"])  # no slash: 301, then the listing
    assert f"Index of /ipfs/{served['cid']}/" in dom
    hrefs = re.findall(r'<a href="([^"]+)"', dom)
    assert "readme.txt" in hrefs and "app/" in hrefs
    text = dump_dom(f"{base}/{'readme.txt'}", served["profile"])
    assert "plain text from pinfold" in text


def test_browser_runs_the_script_of_a_served_index_html(served: dict[str, Any]) -> None:
    dom = dump_dom(f"{served['url']}/ipfs/{served['cid']}/app/", served["profile"])
    assert '<p id="out">script ran 42</p>' in dom
