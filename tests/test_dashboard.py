"""The live dashboard: its state, its server, its ASGI app, and the page in a real browser."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import batchcrew as bc
from batchcrew import dashboard
from batchcrew.testing.pytest_plugin import MakeGroup
from tests.conftest import MakeController

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCRIPT_NAME = "<script>alert(1)</script>"
DOCS_SCREENSHOT = Path(__file__).parents[1] / "docs" / "images" / "dashboard.png"


class FlakyLauncher(bc.LocalLauncher):
    """A local launcher (public contract) whose first launch fails, with markup in its error."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def launch(self, request: bc.LaunchRequest) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("quota exceeded <img src=x onerror=alert(2)>")
        await super().launch(request)


def square(x: int) -> int:
    return x * x


def fail(_: object = None) -> None:
    raise ValueError("bad input <b>not bold</b>")


def wait_for(path: str) -> str:
    """Runs until `path` exists (a gate the test opens), at most a minute."""
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "through"


async def get_state(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    state: dict[str, Any] = response.json()
    return state


async def test_the_state_holds_counts_workers_failures_and_launcher_errors(
    controller: MakeController,
) -> None:
    crew = await controller(workers=2, launcher=FlakyLauncher())
    assert (await crew.map(square, range(6)))["result"].to_list() == [0, 1, 4, 9, 16, 25]
    for name in ("first", SCRIPT_NAME):
        assert (await crew.push(fail, name=name)).status == "error"
    state = json.loads(json.dumps(dashboard.snapshot(crew)))  # JSON as it is
    assert time.time() - 60 < state["time"] <= time.time()
    (mine,) = state["controllers"]
    assert (mine["name"], mine["state"], mine["launcher"]) == (crew.name, "running", "local")
    assert mine["counts"] == crew.counts()
    assert mine["counts"]["success"] == 6
    assert mine["queued"] == 0
    assert mine["launch_failures"] == 1
    assert mine["launches"] >= 2
    workers = crew.workers()
    assert mine["workers_total"] == workers.height
    assert sum(mine["workers_by_state"].values()) == workers.height
    assert {row["worker"] for row in mine["workers"]} == set(workers["worker"])
    row = next(row for row in mine["workers"] if row["state"] != "gone")
    assert row["pid"] > 0
    assert row["connected"] >= row["launched"] > 0
    assert [failure["name"] for failure in mine["failures"]] == [SCRIPT_NAME, "first"]  # newest
    assert mine["failures"][0]["error"] == "ValueError: bad input <b>not bold</b>"
    (error,) = mine["launcher_errors"]
    assert error["what"].startswith("launch ")
    assert error["why"] == "RuntimeError: quota exceeded <img src=x onerror=alert(2)>"


async def test_serve_dashboard_answers_on_loopback_and_stops_with_the_controller(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    url = await crew.serve_dashboard()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
    assert (await crew.push(square, 3)).result == 9
    async with httpx.AsyncClient(timeout=10) as client:
        page = await client.get(url)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert b"<script" in page.content
        assert not re.search(rb'(src|href)="(?!data:)', page.content)  # no asset to fetch
        state = await get_state(client, url + "state.json")
        assert state["controllers"][0]["counts"] == crew.counts()
        assert (await client.head(url)).status_code == 200
        assert (await client.post(url + "state.json")).status_code == 405  # read-only
        assert (await client.get(url + "nothing")).status_code == 404
        # Another name pointed at 127.0.0.1 (DNS rebinding) reads nothing.
        rebound = await client.get(url + "state.json", headers={"Host": "attacker.example"})
        assert rebound.status_code == 421
        local = url.replace("127.0.0.1", "localhost") + "state.json"
        assert (await client.get(local)).status_code == 200
    port = int(url.rsplit(":", 1)[1].rstrip("/"))
    await crew.aclose()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more


async def test_a_port_in_use_raises_and_the_controller_runs_on(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    url = await crew.serve_dashboard()
    port = int(url.rsplit(":", 1)[1].rstrip("/"))
    with pytest.raises(OSError, match="in use"):
        await crew.serve_dashboard(port=port)
    with pytest.raises(ValueError, match="port must be"):
        await crew.serve_dashboard(port=70000)
    assert crew.running
    assert (await crew.push(square, 4)).result == 16
    other = await crew.serve_dashboard()  # a second page, on a port of its own
    assert other != url


async def test_beyond_loopback_warns(
    controller: MakeController, caplog: pytest.LogCaptureFixture
) -> None:
    crew = await controller(workers=1)
    with caplog.at_level(logging.WARNING, logger="batchcrew"):
        url = await crew.serve_dashboard(host="0.0.0.0")
    assert url.startswith("http://0.0.0.0:")
    assert "beyond loopback" in caplog.text
    async with httpx.AsyncClient(timeout=10) as client:  # any Host name is then accepted
        address = url.replace("0.0.0.0", "127.0.0.1") + "state.json"
        response = await client.get(address, headers={"Host": "dashboard.example"})
        assert response.status_code == 200


async def test_serve_dashboard_needs_a_running_controller() -> None:
    crew = bc.Controller("idle")
    with pytest.raises(bc.ControllerClosedError, match="not started"):
        await crew.serve_dashboard()
    assert dashboard.snapshot(crew)["controllers"][0]["state"] == "new"
    async with crew:
        pass
    with pytest.raises(bc.ControllerClosedError, match="closed"):
        await crew.serve_dashboard()
    assert dashboard.snapshot(crew)["controllers"][0]["state"] == "closed"


class BrokenLauncher(bc.LocalLauncher):
    """A launcher (public contract) that never launches."""

    async def launch(self, request: bc.LaunchRequest) -> None:
        raise RuntimeError("no such job queue")


async def test_the_dashboard_shows_why_launching_broke(controller: MakeController) -> None:
    crew = await controller(workers=1, launcher=BrokenLauncher(), launch_failures_max=1)
    with pytest.raises(bc.LaunchError):
        await crew.push(square, 2)
    url = await crew.serve_dashboard()  # when it is most needed
    async with httpx.AsyncClient(timeout=10) as client:
        (mine,) = (await get_state(client, url + "state.json"))["controllers"]
    assert mine["launch_failures"] == 1
    assert mine["launcher_errors"][0]["why"] == "RuntimeError: no such job queue"


async def test_a_group_serves_one_page_for_its_controllers(controller_group: MakeGroup) -> None:
    small = bc.Controller("small", 1, seconds_heartbeat=5.0)
    big = bc.Controller("big", 1, seconds_heartbeat=5.0)
    group = await controller_group(small, big)
    await group.map(square, range(3), controller="big")
    url = await group.serve_dashboard()
    only = await group.serve_dashboard(controllers=["small"])
    async with httpx.AsyncClient(timeout=10) as client:
        state = await get_state(client, url + "state.json")
        assert [crew["name"] for crew in state["controllers"]] == ["small", "big"]
        assert state["controllers"][1]["counts"] == big.counts()
        state = await get_state(client, only + "state.json")
        assert [crew["name"] for crew in state["controllers"]] == ["small"]
    await small.aclose()  # the first controller serves the page: it stops with it
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1].rstrip("/")))) != 0


async def test_the_asgi_app_answers_at_its_root_whatever_the_mount() -> None:
    crew = bc.Controller("asgi")
    app = dashboard.asgi_app(crew)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/")).headers["content-type"].startswith("text/html")
        state = await get_state(client, "/state.json")
        assert state["controllers"][0]["state"] == "new"
        assert (await client.delete("/state.json")).status_code == 405
        assert (await client.get("/other")).status_code == 404
        head = await client.head("/")
        assert head.status_code == 200
        assert head.content == b""
    # A server that strips the mount from the path, and one that keeps it (Starlette).
    for path in ("/state.json", "/under/state.json"):
        transport = httpx.ASGITransport(app=app, root_path="/under")
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get(path)).status_code == 200
    transport = httpx.ASGITransport(app=app, root_path="/under")
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        bare = await client.get("/under")
        assert (bare.status_code, bare.headers["location"]) == (307, "/under/")


@contextlib.asynccontextmanager
async def browser_page(url: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """Headless Chromium at `url` (skips where Debian's chromium is not installed); also the
    messages of any dialog that opened (each dismissed). Fails on an error in the page's
    console (a script error, or something the page's security policy refused)."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.async_api")
    playwright_api.expect.set_options(timeout=20_000)  # the page asks every second
    dialogs: list[str] = []
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000}, locale="en-US")

            async def dismiss(dialog: Any) -> None:
                dialogs.append(dialog.message)
                await dialog.dismiss()

            errors: list[str] = []

            def console(message: Any) -> None:
                if message.type == "error":
                    errors.append(message.text)

            page.on("dialog", dismiss)
            page.on("console", console)
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(url)
            await playwright_api.expect(page.locator("#status")).to_have_text(
                re.compile("^updated")
            )
            yield page, dialogs
            assert errors == []
        finally:
            await browser.close()


@pytest.mark.timeout(180)
async def test_the_page_in_a_browser_follows_the_run_and_shows_names_as_text(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(name="analysis", workers=2, launcher=FlakyLauncher())
    url = await crew.serve_dashboard()
    gate = tmp_path / "gate"
    async with browser_page(url) as (page, dialogs):
        from playwright.async_api import expect

        await expect(page.locator("#count-tasks")).to_have_text("0")

        async def page_matches_counts() -> None:
            counts = crew.counts()
            for key in ("tasks", "unresolved", "workers"):
                await expect(page.locator(f"#count-{key}")).to_have_text(str(counts[key]))
            for status in ("success", "error", "crash", "cancel", "unresolved"):
                await expect(page.locator(f"#status-{status}")).to_have_text(str(counts[status]))
            assert crew.counts() == counts  # nothing moved while the page caught up

        # Three tasks held at a gate: unresolved on the page, running on both workers.
        held = await crew.walk(wait_for, [str(gate)] * 3)
        await expect(page.locator("#state-busy")).to_have_text("2")
        await page_matches_counts()
        await expect(page.locator("#count-unresolved")).to_have_text("3")
        gate.touch()
        with anyio.fail_after(60):
            assert all([(await task).status == "success" for task in held])
        failed = await crew.push(fail, name=SCRIPT_NAME)
        assert failed.status == "error"
        await crew.map(square, range(5))
        await page_matches_counts()
        await expect(page.locator("#status-success")).to_have_text("8")
        await expect(page.locator("#status-error")).to_have_text("1")

        # User data shows as text: no element, no script, no dialog.
        failure = page.locator("#failures tbody tr").first
        await expect(failure.locator("td").first).to_have_text(SCRIPT_NAME)
        await expect(failure).to_contain_text("ValueError: bad input <b>not bold</b>")
        await expect(page.locator("#launcher-errors tbody tr")).to_contain_text(
            "quota exceeded <img src=x onerror=alert(2)>"
        )
        assert await page.locator("script").count() == 1  # the page's own
        assert await page.locator("#failures b, #launcher-errors img").count() == 0
        await expect(page.locator("#workers tbody tr").first).to_be_visible()

        screenshot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 10_000
        if os.environ.get("BATCHCREW_DOCS_SCREENSHOT"):
            shutil.copyfile(screenshot, DOCS_SCREENSHOT)  # the picture in docs/observing.md
        assert dialogs == []


@pytest.mark.timeout(180)
async def test_a_group_page_adds_its_controllers_up_or_shows_one(
    controller_group: MakeGroup,
) -> None:
    small = bc.Controller("small", 1, seconds_heartbeat=5.0)
    big = bc.Controller("big", 1, seconds_heartbeat=5.0)
    group = await controller_group(small, big)
    await group.map(square, range(3), controller="big")
    await group.map(square, range(2), controller="small")
    assert (await group.push(fail, name="broken", controller="small")).status == "error"
    url = await group.serve_dashboard()
    async with browser_page(url) as (page, dialogs):
        from playwright.async_api import expect

        await expect(page.locator("#choice")).to_be_visible()
        await expect(page.locator("#count-tasks")).to_have_text("6")  # all, added up
        await expect(page.locator("#status-error")).to_have_text("1")
        await expect(page.locator("#workers th").first).to_have_text("controller")
        await expect(page.locator("#failures tbody td").first).to_have_text("small")
        await page.select_option("#controller", "big")
        await expect(page.locator("#count-tasks")).to_have_text("3")
        await expect(page.locator("#status-error")).to_have_text("0")
        await expect(page.locator("#workers th").first).to_have_text("worker")
        await expect(page.locator("#failures tbody tr")).to_have_count(0)
        await page.select_option("#controller", "small")
        await expect(page.locator("#count-tasks")).to_have_text("3")
        await expect(page.locator("#failures tbody td").first).to_have_text("broken")
        assert dialogs == []
