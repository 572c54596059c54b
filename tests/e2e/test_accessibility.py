"""Every page, light and dark, on a laptop and a phone: axe finds nothing serious, the
console stays clean, nothing is wider than the screen, and a keyboard starts at "Skip to
content".

One browser context per colour scheme and width, signed in once; axe-core is the vendored
copy (static/vendor/axe.min.js), injected by the test and linked from no page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS
from tests.e2e.helpers import log_in

AXE = Path(__file__).resolve().parents[2] / "static" / "vendor" / "axe.min.js"
MISSING = "/no-such-page"
RUN_AXE = """() => axe.run(document, {resultTypes: ["violations"]}).then(result =>
  result.violations.map(v => ({id: v.id, impact: v.impact,
                               targets: v.nodes.map(n => n.target.join(" "))})))"""


def _first_link(page, path: str, selector: str) -> str | None:
    page.goto(path)
    link = page.locator(selector).first
    return link.get_attribute("href") if link.count() else None


def _pages(page) -> list[str]:
    """The signed-in pages to check, with ids taken from the demo's own lists."""
    paths = ["/dashboard", "/sessions"]
    page.goto("/sessions?status=completed")
    finished = page.locator("#session-list tbody tr td:first-child a")
    ids = [link.get_attribute("href").rsplit("/", 1)[1] for link in finished.all()[:3]]
    if ids:
        paths.append(f"/sessions/{ids[0]}")
    if len(ids) > 1:
        paths.append(f"/sessions/compare?ids={','.join(ids)}")
    # A search session's page (plots, candidates) when the server has one.
    search = page.locator("#session-list tbody tr").filter(
        has=page.locator("td:nth-child(4)", has_text=re.compile(r"^\s*search"))
    )
    if search.count():
        paths.append(search.first.locator("td:first-child a").get_attribute("href"))
    paths += ["/models", _first_link(page, "/models", "#model-table tbody td:first-child a")]
    paths += ["/config", _first_link(page, "/config", "a[href^='/config/versions/']")]
    paths += [
        "/account/tokens",
        "/admin/users",
        "/admin/audit",
        "/admin/system",
        "/docs/api-tokens",
        "/docs/sessions",
        MISSING,
    ]
    return [p for p in paths if p]


def _check(page, path: str, width: int, problems: list[str], console: list[tuple[str, str]]) -> None:
    response = page.goto(path)
    if path == MISSING:
        assert response.status == 404
    elif page.locator("#live").count():
        # Out-of-band fragments arrive over /ws once it is open: let the first batch land.
        expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")
        page.wait_for_timeout(300)
    for found in page.evaluate(RUN_AXE):
        if found["impact"] in ("serious", "critical"):
            problems.append(f"{path}: axe {found['id']} ({found['impact']}) on {found['targets'][:4]}")
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    if scroll_width > width:
        problems.append(f"{path}: {scroll_width} px wide in a {width} px window")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent.trim()")
    if focused != "Skip to content":
        problems.append(f"{path}: the first Tab reaches {focused!r}, not the skip link")
    if not page.locator("link[rel=icon]").count():
        problems.append(f"{path}: no favicon link")
    for url, text in console:
        # The 404 page itself is the one expected failed load.
        if not (path == MISSING and url.endswith(MISSING)):
            problems.append(f"{path}: console error {text!r} ({url})")
    console.clear()


@pytest.mark.parametrize("width", [1366, 390])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_is_accessible_clean_and_fits(browser, server, scheme, width):
    context = browser.new_context(
        base_url=server, viewport={"width": width, "height": 900}, color_scheme=scheme
    )
    context.add_init_script(path=str(AXE))
    page = context.new_page()
    page.set_default_timeout(10_000)
    console: list[tuple[str, str]] = []
    failed_loads: list[str] = []

    def on_console(message):
        if message.type == "error":
            console.append((message.location.get("url", ""), message.text))

    def on_response(response):
        # (A missing favicon would show here: browsers ask for one on every page.)
        if response.status >= 400 and not response.url.endswith(MISSING):
            failed_loads.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: console.append((page.url, f"uncaught {error}")))
    page.on("response", on_response)
    problems: list[str] = []
    try:
        _check(page, "/login", width, problems, console)
        log_in(page)
        expect(page).to_have_url("/dashboard")
        if width < 800:
            # The phone's header: a menu button that opens the navigation, no script needed.
            nav = page.get_by_role("navigation", name="Main")
            expect(nav).to_be_hidden()
            page.get_by_text("Menu", exact=True).click()
            expect(nav.get_by_role("link", name="Sessions")).to_be_visible()
        paths = _pages(page)
        console.clear()  # (what the look-ups met is checked page by page below)
        for path in paths:
            _check(page, path, width, problems, console)
        problems += [f"failed load: {load}" for load in failed_loads]
        if problems:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"accessibility-{scheme}-{width}.png"), full_page=True)
        assert not problems, "\n".join(problems)
    finally:
        context.close()
