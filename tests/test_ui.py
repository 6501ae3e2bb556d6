"""The web UI in a real browser: Playwright driving Debian's Chromium against real nodes.

One Chromium per module; every test opens its own browser contexts (separate users) on
in-process nodes running in the same event loop. Every page is watched for console
errors and uncaught exceptions, and the test fails on any (checked at teardown).

Set KVS_UI_SCREENSHOTS=docs/ui to write the screenshots of docs/ui.md (1280 and 390 px).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio

from kvs.node import Node
from tests.cluster import FAST, converged, heal, partition, start_cluster
from tests.conftest import Api, NodeFactory, node_factory

CHROMIUM = "/usr/bin/chromium"
if not shutil.which(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api",
                                     reason="playwright is not installed (pip install playwright)")
expect = playwright_api.expect

pytestmark = pytest.mark.asyncio(loop_scope="module")

HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDE, NARROW = 1280, 390
SHOTS = os.environ.get("KVS_UI_SCREENSHOTS")
# Chrome logs every failed fetch on the console. These are answers the UI reads by design
# (404: the key is absent; 409: a CAS conflict) and the network going away while a test
# has the browser offline; any other console error or warning fails the test.
EXPECTED = re.compile(r"Failed to load resource: (the server responded with a status of (404|409) "
                      r"|net::ERR_INTERNET_DISCONNECTED)")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=HEADLESS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def make_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """conftest's make_node, in this module's event loop (the browser's)."""
    async with node_factory(tmp_path) as factory:
        yield factory


@pytest_asyncio.fixture(loop_scope="module")
async def node(make_node: NodeFactory) -> Node:
    return await make_node(**FAST)


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Browser:
    """Opens pages in fresh contexts and records what their consoles say."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.problems: list[str] = []

    async def open(self, url: str, width: int = WIDE) -> Any:
        context = await self.browser.new_context(viewport={"width": width, "height": 900})
        self.contexts.append(context)
        page = await context.new_page()
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.problems.append(f"{page.url}: uncaught {error}"))
        await page.goto(url)
        return page

    def _console(self, page: Any, message: Any) -> None:
        if message.type not in ("error", "warning"):
            return
        if EXPECTED.match(message.text):
            return
        self.problems.append(f"{page.url}: console {message.type}: {message.text}")

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def ui(browser: Any, make_node: NodeFactory) -> AsyncIterator[Browser]:
    """Pages for one test; closed before the nodes stop; no console error allowed."""
    pages = Browser(browser)
    try:
        yield pages
    finally:
        await pages.close()
    assert pages.problems == []


def at(node: Node, route: str) -> str:
    return f"{node.url}/ui/#/{route}"


def enc(key: str) -> str:
    return quote(key, safe="")


async def shoot(page: Any, name: str) -> None:
    """Screenshots for docs/ui.md, wide and narrow, when KVS_UI_SCREENSHOTS names a folder."""
    if not SHOTS:
        return
    for width, suffix in ((WIDE, ""), (NARROW, "-390")):
        await page.set_viewport_size({"width": width, "height": 900})
        await page.wait_for_timeout(150)  # layout settles (a screenshot, not a synchronisation)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}{suffix}.png"), full_page=True)
    await page.set_viewport_size({"width": WIDE, "height": 900})


async def put(api: Api, key: str, value: Any, **extra: Any) -> dict[str, Any]:
    reply = await api.put(key, {"value": value, **extra})
    assert reply.status == 200, reply.body
    return reply.body


# -- keys ----------------------------------------------------------------------------------

async def test_browse_folders_pages_and_open_a_key(node: Node, http: aiohttp.ClientSession,
                                                   ui: Browser) -> None:
    api = Api(http, node.url)
    await put(api, "app/config", {"feature": True, "limit": 3})
    await put(api, "app/db/host", "db.local")
    await put(api, "app/db/port", 5432)
    await put(api, "top", "level")
    reply = await api.txn([{"op": "set", "key": f"many/{i:02}", "value": i} for i in range(55)])
    assert reply.status == 200
    page = await ui.open(f"{node.url}/ui/")
    root = page.locator(".listing")
    await expect(root.locator("li")).to_have_text(
        [re.compile(r"app/\s*3 keys"), re.compile(r"many/\s*55 keys"), "top"])
    await shoot(page, "keys")

    await page.get_by_role("link", name="app/").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Folder app/")
    await expect(root.locator("li")).to_have_text(["config", re.compile(r"db/\s*2 keys")])
    await page.get_by_role("link", name="config").click()
    value = page.get_by_label("Value", exact=True)
    await expect(value).to_have_text('{\n  "feature": true,\n  "limit": 3\n}')
    await page.get_by_label("Raw").check()
    await expect(value).to_have_text('{"feature":true,"limit":3}')

    await page.goto(at(node, "keys/many%2F"))  # 55 keys: two pages of 50
    await expect(root.locator("li")).to_have_count(50)
    await page.get_by_role("button", name="Next page").click()
    await expect(root.locator("li")).to_have_text([f"{i}" for i in range(50, 55)])
    await page.get_by_role("button", name="Previous page").click()
    await expect(root.locator("li")).to_have_count(50)
    await page.get_by_label("Filter in many/ by prefix").fill("1")
    await expect(root.locator("li")).to_have_text([f"1{i}" for i in range(10)])


async def test_create_is_create_only(node: Node, http: aiohttp.ClientSession, ui: Browser) -> None:
    api = Api(http, node.url)
    page = await ui.open(at(node, "keys/cfg%2F"))
    await page.get_by_text("New key").click()
    await page.get_by_label("Name").fill("cfg/new")
    await page.get_by_label("Value (JSON)").fill('{"on": true}')
    await page.get_by_role("button", name="Create").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Key cfg/new")
    assert (await api.get("cfg/new")).body["value"] == {"on": True}

    await page.goto(at(node, "keys/cfg%2F"))  # again: the key exists, nothing is written
    await page.get_by_text("New key").click()
    await page.get_by_label("Name").fill("cfg/new")
    await page.get_by_label("Value (JSON)").fill("not json")
    await page.get_by_role("button", name="Create").click()
    await expect(page.get_by_text("Not valid JSON")).to_be_visible()
    await page.get_by_label("Plain string").check()
    await page.get_by_role("button", name="Create").click()
    await expect(page.get_by_text("A key with this name already exists")).to_be_visible()
    current = (await api.get("cfg/new")).body
    assert current["value"] == {"on": True} and current["modify_index"] == current["create_index"]


async def test_edit_writes_on_top_of_the_loaded_version(node: Node, http: aiohttp.ClientSession,
                                                        ui: Browser) -> None:
    api = Api(http, node.url)
    first = await put(api, "svc/limit", 10, flags=7)
    page = await ui.open(at(node, "key/svc%2Flimit"))
    await page.get_by_role("button", name="Edit").click()
    await page.get_by_label("Value (JSON)").fill("20")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_text(re.compile(r"Saved version"))).to_be_visible()
    await expect(page.get_by_label("Value", exact=True)).to_have_text("20")
    history = (await api.get("svc/limit", history="true")).body["revisions"]
    assert [v["value"] for v in history] == [20, 10]
    assert history[0]["parent"] == first["version"] and history[0]["flags"] == 7  # flags kept


async def test_conflict_between_two_editors_overwrites_nothing(node: Node, http: aiohttp.ClientSession,
                                                               ui: Browser) -> None:
    api = Api(http, node.url)
    await put(api, "doc", {"title": "draft", "tags": ["a"]})
    alice = await ui.open(at(node, "key/doc"))
    bob = await ui.open(at(node, "key/doc"))
    for page in (alice, bob):
        await page.get_by_role("button", name="Edit").click()
    await alice.get_by_label("Value (JSON)").fill('{"title": "alice", "tags": ["a"]}')
    await alice.get_by_role("button", name="Save").click()
    await expect(alice.get_by_text(re.compile("Saved version"))).to_be_visible()
    # Bob's editor was told, live, that the key moved on.
    await expect(bob.get_by_text(re.compile("Changed since you opened the editor"))).to_be_visible()
    await bob.get_by_label("Value (JSON)").fill('{"title": "bob", "tags": ["a", "b"]}')
    await bob.get_by_role("button", name="Save").click()

    conflict = bob.locator(".conflict")
    await expect(conflict.get_by_role("heading", level=2)).to_have_text(
        "Conflict: the key changed, nothing was written")
    await expect(conflict.locator("figure").first.locator("pre")).to_contain_text('"alice"')
    await expect(conflict.locator("figure").last.locator("pre")).to_contain_text('"bob"')
    await expect(conflict.locator(".diff .del")).to_contain_text(['"title": "alice"'])
    await expect(conflict.locator(".diff .ins")).to_contain_text(['"title": "bob"', '"b"'])
    assert (await api.get("doc")).body["value"] == {"title": "alice", "tags": ["a"]}
    await shoot(bob, "conflict")

    await conflict.get_by_role("button", name=re.compile("Save my edit on top of version")).click()
    await expect(bob.get_by_text(re.compile("Saved version"))).to_be_visible()
    history = (await api.get("doc", history="true")).body["revisions"]
    assert [v["value"]["title"] for v in history] == ["bob", "alice", "draft"]
    assert not any(v["superseded"] for v in history)  # a succession, not a lost write


async def test_delete_with_cas(node: Node, http: aiohttp.ClientSession, ui: Browser) -> None:
    api = Api(http, node.url)
    await put(api, "tmp/a", 1)
    page = await ui.open(at(node, "key/tmp%2Fa"))
    await page.get_by_role("button", name="Delete").click()
    # The key changes while the user looks at the confirmation: the delete must not apply.
    await put(api, "tmp/a", 2)
    await expect(page.get_by_label("Value", exact=True)).to_have_text("2")
    await page.get_by_role("button", name="Delete", exact=True).click()
    await expect(page.locator(".conflict")).to_contain_text("Your action")
    assert (await api.get("tmp/a")).body["value"] == 2
    await page.get_by_role("button", name=re.compile(r"^Delete version")).click()
    await expect(page.get_by_text("No live key here")).to_be_visible()
    assert (await api.get("tmp/a")).status == 404


# -- live updates and TTL --------------------------------------------------------------------

async def test_changes_made_elsewhere_appear_within_a_second(node: Node, http: aiohttp.ClientSession,
                                                             ui: Browser) -> None:
    api = Api(http, node.url)
    await put(api, "live/k", "one")
    key_page = await ui.open(at(node, "key/live%2Fk"))
    folder_page = await ui.open(at(node, "keys/live%2F"))
    value = key_page.get_by_label("Value", exact=True)
    await expect(value).to_have_text('"one"')
    await expect(folder_page.locator(".listing li")).to_have_text(["k"])
    await put(api, "live/k", "two")
    await put(api, "live/new", 1)
    await expect(value).to_have_text('"two"', timeout=1000)
    await expect(folder_page.locator(".listing li")).to_have_text(["k", "new"], timeout=1000)
    assert (await api.delete("live/k")).status == 200
    await expect(key_page.get_by_text("No live key here")).to_be_visible(timeout=1000)

    indicator = folder_page.locator("#node-status")
    await expect(indicator).to_have_text(f"node {node.engine.node_id}")
    await folder_page.context.set_offline(True)  # the node stops answering this browser
    await expect(indicator).to_have_text("node unreachable, retrying…")
    await folder_page.context.set_offline(False)
    await expect(indicator).to_have_text(f"node {node.engine.node_id}", timeout=3000)


async def test_ttl_countdown_runs_out_and_the_key_disappears(node: Node, http: aiohttp.ClientSession,
                                                             ui: Browser) -> None:
    api = Api(http, node.url)
    await put(api, "lease/short", "me")
    page = await ui.open(at(node, "key/lease%2Fshort"))
    await page.get_by_label("TTL in seconds").fill("2")
    await page.get_by_role("button", name="Set TTL").click()
    countdown = page.locator(".countdown")
    await expect(countdown).to_have_text(re.compile(r"^[12]\.\d s$"))
    first = await countdown.text_content()
    await expect(countdown).not_to_have_text(first or "")  # it counts down by itself
    await expect(page.get_by_text("No live key here")).to_be_visible(timeout=5000)
    assert (await api.get("lease/short")).status == 404
    await page.goto(at(node, "keys/lease%2F"))
    await expect(page.get_by_text("No keys here yet.")).to_be_visible()


async def test_leases_view_lists_keys_with_a_ttl_and_their_holder(node: Node, http: aiohttp.ClientSession,
                                                                  ui: Browser) -> None:
    api = Api(http, node.url)
    await put(api, "locks/deploy", {"holder": "worker-1", "token": "abc"}, ttl=60, cas=0)
    await put(api, "locks/backup", "cron", ttl=600)
    await put(api, "config/permanent", 1)
    page = await ui.open(at(node, "leases"))
    rows = page.locator("table.leases tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("locks/deploy")
    await expect(rows.first).to_contain_text("worker-1")
    await expect(rows.first.locator(".countdown")).to_have_text(re.compile(r"^(59|60)\.\d s$"))
    await expect(rows.last).to_contain_text("cron")
    await shoot(page, "leases")
    assert (await api.delete("locks/deploy")).status == 200
    await expect(rows).to_have_count(1, timeout=1000)


# -- history and the cluster -----------------------------------------------------------------

async def test_history_marks_the_version_that_lost_a_cross_node_conflict(
        make_node: NodeFactory, http: aiohttp.ClientSession, ui: Browser) -> None:
    a, b, c = await start_cluster(make_node, 3)
    api_a, api_b = Api(http, a.url), Api(http, b.url)
    base = await put(api_a, "shared/cfg", {"v": 1})
    await converged([a, b, c])
    partition([a], [b, c])  # both sides accept a CAS on the same version, unaware of each other
    mine = await put(api_a, "shared/cfg", {"v": "from a"}, if_version=base["version"])
    theirs = await put(api_b, "shared/cfg", {"v": "from b"}, if_version=base["version"])
    heal([a, b, c])
    await converged([a, b, c])
    history = (await Api(http, c.url).get("shared/cfg", history="true")).body["revisions"]
    winner, loser = (history[0], history[1])
    assert {winner["version"], loser["version"]} == {mine["version"], theirs["version"]}
    assert loser["superseded"] and not winner["superseded"]

    page = await ui.open(at(c, "history/shared%2Fcfg"))
    rows = page.locator("table.history tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.nth(0).locator(".marks")).to_have_text("current")
    superseded = rows.nth(1).locator(".tag.superseded")
    await expect(superseded).to_contain_text(f"superseded by {winner['version'][:8]} ({winner['origin']},")
    await expect(rows.nth(1)).to_contain_text(loser["origin"])
    await expect(rows.nth(2).locator(".marks")).to_have_text("")  # the common parent lost nothing
    await shoot(page, "history")

    await page.get_by_label(f"Compare from version {base['version'][:8]}").check()
    await expect(page.locator(".compare .del")).to_contain_text(['"v": 1'])
    await expect(page.locator(".compare .ins")).to_contain_text([f'"v": "{winner["value"]["v"]}"'])

    await rows.nth(1).get_by_role("button", name=re.compile("Restore")).click()  # a CAS write on top
    await expect(page.get_by_text(re.compile("Restored as version"))).to_be_visible()
    await expect(rows).to_have_count(4)
    restored = (await Api(http, c.url).get("shared/cfg")).body
    assert restored["value"] == loser["value"] and restored["parent"] == winner["version"]


async def test_cluster_page_shows_members_and_equal_merkle_roots(
        make_node: NodeFactory, http: aiohttp.ClientSession, ui: Browser) -> None:
    nodes = await start_cluster(make_node, 3)
    api = Api(http, nodes[0].url)
    for i in range(5):
        await put(api, f"k{i}", i)
    reply = await api.request("POST", "/services", json={"name": "web", "port": 8000, "tags": ["blue"]})
    assert reply.status == 200
    await converged(nodes)
    page = await ui.open(at(nodes[1], "cluster"))
    rows = page.locator("table.members tbody tr")
    await expect(rows).to_have_count(3)
    for node in nodes:
        row = page.locator(f'tr[data-node="{node.engine.node_id}"]')
        await expect(row).to_contain_text("alive")
        await expect(row.locator(".root")).to_have_text(f"{node.storage.tree.root():016x}")
    await expect(page.locator(".summary")).to_contain_text("Merkle roots equal on 3 nodes")
    await expect(page.locator("table.services")).to_contain_text("web")
    rounds = page.locator(f'details[data-node="{nodes[0].engine.node_id}"]')
    await rounds.locator("summary").click()  # its last anti-entropy rounds, kept open across refreshes
    await expect(rounds.locator("table.rounds tbody tr").first).to_be_visible()
    await shoot(page, "cluster")


# -- every page ------------------------------------------------------------------------------

# The form controls on the page that no <label> and no aria-label names.
UNLABELLED = """() => [...document.querySelectorAll('input, textarea, select')]
    .filter((el) => el.labels.length === 0 && !el.getAttribute('aria-label'))
    .map((el) => el.outerHTML)"""
# Each page, and what shows once it has drawn its data.
ROUTES = {"keys/": ".listing li", "keys/app%2F": ".listing li", "key/app%2Fk": "pre.value",
          "key/absent": "text=No live key here", "history/app%2Fk": "table.history",
          "leases": "table.leases", "cluster": "table.members .root"}


async def test_every_page_labels_its_controls_and_fits_a_phone(node: Node, http: aiohttp.ClientSession,
                                                               ui: Browser) -> None:
    """At 1280 and 390 px: every control has a label, nothing is wider than the screen,
    the keyboard reaches the controls; the console checks of `ui` apply to every page."""
    api = Api(http, node.url)
    await put(api, "app/k", {"nested": {"list": [1, 2, 3]}, "text": "x" * 300})
    await put(api, "app/k", {"nested": {"list": [1, 2]}, "text": "y" * 300}, ttl=300)
    for width in (WIDE, NARROW):
        page = await ui.open(at(node, "keys/"), width)
        for route, ready in ROUTES.items():
            await page.goto(at(node, route))
            await expect(page.locator(ready).first).to_be_visible()
            unlabelled = await page.evaluate(UNLABELLED)
            assert unlabelled == [], (route, width)
            scroll_width = await page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= width, (route, width, scroll_width)
        await page.goto(at(node, "key/app%2Fk"))
        await expect(page.get_by_role("button", name="Edit")).to_be_visible()
        for _ in range(30):  # the keyboard alone reaches the Edit button and opens the editor
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.textContent") == "Edit":
                break
        await page.keyboard.press("Enter")
        await expect(page.get_by_label("Value (JSON)")).to_be_focused()
        if width == WIDE:
            await page.reload()
            await expect(page.locator(".countdown")).to_have_text(re.compile(" s$"))
            await shoot(page, "key")
