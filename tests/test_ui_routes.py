"""GET /ui/...: the web UI's files, with their content types, revalidation and no way out
of the UI's folder; the two reads the UI makes of other members allow any origin; the
files ship in the wheel. The UI itself is tested in a browser (tests/test_ui.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from kvs.http.ui import CONTENT_TYPES
from kvs.node import Node

ROOT = Path(__file__).resolve().parent.parent
UI = ROOT / "kvs" / "ui"
SHIPPED = sorted(str(p.relative_to(UI)) for p in UI.rglob("*") if p.suffix in CONTENT_TYPES)


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
              ) -> tuple[int, Mapping[str, str], bytes]:
    """Status, headers (case-insensitive) and body; the URL is sent exactly as written."""
    async with http.get(URL(url, encoded=True), headers=headers, allow_redirects=False) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_ui_redirects_to_its_folder_and_serves_the_page(node: Node,
                                                              http: aiohttp.ClientSession) -> None:
    status, headers, _ = await get(http, node.url + "/ui")
    assert (status, headers["Location"]) == (301, "/ui/")
    status, headers, body = await get(http, node.url + "/ui/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="js/app.js">' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_every_file_has_its_content_type_and_an_etag(node: Node, http: aiohttp.ClientSession) -> None:
    assert {"index.html", "app.css", "js/app.js"} <= set(SHIPPED)
    for path in SHIPPED:
        status, headers, body = await get(http, f"{node.url}/ui/{path}")
        assert status == 200, path
        assert headers["Content-Type"] == CONTENT_TYPES[Path(path).suffix], path
        assert body == (UI / path).read_bytes(), path
        # No hash in the file names (no build step): a browser revalidates every file.
        assert headers["Cache-Control"] == "no-cache" and headers["ETag"].startswith('"'), path


async def test_an_unchanged_file_is_a_304(node: Node, http: aiohttp.ClientSession) -> None:
    _, headers, _ = await get(http, node.url + "/ui/js/app.js")
    status, again, body = await get(http, node.url + "/ui/js/app.js", {"If-None-Match": headers["ETag"]})
    assert (status, body, again["ETag"]) == (304, b"", headers["ETag"])
    status, _, body = await get(http, node.url + "/ui/js/app.js", {"If-None-Match": '"other"'})
    assert status == 200 and body


@pytest.mark.parametrize("path", [
    "/ui/../pyproject.toml", "/ui/%2e%2e/http/ui.py", "/ui/js/..%2f..%2fhttp%2fui.py",
    "/ui/js/../../http/ui.py", "/ui//etc/passwd", "/ui/%2Fetc%2Fpasswd", "/ui/js/", "/ui/js",
    "/ui/nope.js", "/ui/index.html.bak", "/ui/..%5c..%5cpyproject.toml",
])
async def test_nothing_outside_the_shipped_files(node: Node, http: aiohttp.ClientSession, path: str) -> None:
    assert (await get(http, node.url + "/ui/index.html"))[0] == 200  # the folder is served...
    status, headers, body = await get(http, node.url + path)  # ...and nothing around it
    assert status == 404, path
    assert headers["Content-Type"].startswith("application/json") and b'"not_found"' in body


async def test_index_links_the_ui(node: Node, http: aiohttp.ClientSession) -> None:
    async with http.get(node.url + "/") as resp:
        assert (await resp.json())["links"]["ui"] == "/ui/"


async def test_only_health_and_status_allow_any_origin(node: Node, http: aiohttp.ClientSession) -> None:
    """What the UI of one member reads of the others; never the key space."""
    origin = {"Origin": "http://127.0.0.1:1"}
    for path in ("/health", "/cluster/status"):
        _, headers, _ = await get(http, node.url + path, origin)
        assert headers["Access-Control-Allow-Origin"] == "*", path
    for path in ("/kv/?keys=true", "/cluster/members", "/services", "/ui/"):
        _, headers, _ = await get(http, node.url + path, origin)
        assert "Access-Control-Allow-Origin" not in headers, path


def test_the_package_ships_the_ui(tmp_path: Path) -> None:
    """`pip install` carries every UI file (no Node.js, no build step): setuptools' build_py,
    the step that fills a wheel, run on a copy of the project, copies them all."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copytree(ROOT / "kvs", tmp_path / "kvs", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "--quiet", "build_py",
                    "--build-lib", "out"], check=True, cwd=tmp_path, timeout=120, capture_output=True)
    out = tmp_path / "out" / "kvs" / "ui"
    built = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert built == set(SHIPPED)
