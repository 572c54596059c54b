"""Live updates in a real browser: no reloads, several tabs, a server that restarts."""

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import ADMIN_PASSWORD, DEMO_PASSWORD, log_in
from webapp.testing import Server

# Set on load; a reload would lose it.
MARK_PAGE = "window.__notReloaded = true"
NOT_RELOADED = "window.__notReloaded === true"


def api_headers(page, username="demo-operator", password=DEMO_PASSWORD) -> dict:
    token = page.request.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert token.ok, token.text()
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def start_sessions(page, headers, count: int) -> list[int]:
    """Start `count` sessions on the demo MLP; the server runs one at a time, so the last
    ones wait in the queue for a while."""
    models = page.request.get("/api/v1/models?q=digits-mlp", headers=headers).json()["models"]
    model_id = next(m["model_id"] for m in models if m["format"] == "onnx")
    ids = []
    for _ in range(count):
        started = page.request.post(
            "/api/v1/optimization/sessions",
            headers=headers,
            data={"model_id": model_id, "techniques": ["quantization"]},
        )
        assert started.status == 202, started.text()
        ids.append(started.json()["session_id"])
    return ids


def test_the_session_page_follows_a_session_without_reloading(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    headers = api_headers(page)
    *_, watched = start_sessions(page, headers, 3)
    page.goto(f"/sessions/{watched}")
    page.evaluate(MARK_PAGE)
    bar = page.locator("#session-live [role=progressbar]")
    first = bar.get_attribute("aria-valuenow")
    # Every value the bar shows, as the server pushes new ones.
    page.evaluate("""() => {
        window.__progress = [];
        new MutationObserver(() => {
            const bar = document.querySelector('#session-live [role=progressbar]');
            const value = bar && bar.getAttribute('aria-valuenow');
            if (value !== window.__progress.at(-1)) window.__progress.push(value);
        }).observe(document.body, {subtree: true, childList: true, attributes: true});
    }""")
    assert float(first) < 100, "the session should still be waiting when its page opens"
    expect(page.locator("#session-live .status-line .badge")).to_have_text("completed", timeout=90_000)
    expect(bar).to_have_attribute("aria-valuenow", "100.0")
    seen = [float(v) for v in page.evaluate("window.__progress")]
    assert seen == sorted(seen) and seen[-1] == 100 and len(seen) >= 2, seen
    expect(page.get_by_role("heading", name="Before and after")).to_be_visible()
    assert page.evaluate(NOT_RELOADED)


def test_two_tabs_of_one_user_both_stay_live(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    headers = api_headers(page)
    *_, watched = start_sessions(page, headers, 2)
    second = page.context.new_page()
    tabs = (page, second)
    for tab in tabs:
        tab.goto("/sessions")
        tab.evaluate(MARK_PAGE)
        expect(tab.locator("#live-status")).to_have_attribute("data-state", "connected")
    for tab in tabs:
        row = tab.locator(f"#session-{watched}")
        expect(row.locator(".badge")).to_have_text("completed", timeout=90_000)
        assert tab.evaluate(NOT_RELOADED)


@pytest.fixture
def restartable(tmp_path):
    server = Server(tmp_path, {"OPTIDECK_ADMIN_PASSWORD": ADMIN_PASSWORD}).start()
    yield server
    if server.process.poll() is None:
        server.stop()


def test_the_indicator_goes_offline_and_comes_back_after_a_restart(browser, restartable):
    context = browser.new_context(base_url=restartable.url)
    page = context.new_page()
    log_in(page)
    page.goto("/dashboard")
    page.evaluate(MARK_PAGE)
    status = page.locator("#live-status")
    expect(status).to_have_attribute("data-state", "connected")
    expect(status).to_have_text("● live")
    page.evaluate("""() => {
        window.__states = [];
        const badge = document.getElementById('live-status');
        new MutationObserver(() => {
            if (badge.dataset.state !== window.__states.at(-1)) window.__states.push(badge.dataset.state);
        }).observe(badge, {attributes: true});
    }""")

    restartable.stop()
    expect(status).to_have_attribute("data-state", "offline", timeout=20_000)
    expect(status).to_have_text("● offline, retrying…")

    restartable.start()
    expect(status).to_have_attribute("data-state", "connected", timeout=30_000)
    # First "reconnecting" (a drop may be brief), "offline" once attempts kept failing.
    states = page.evaluate("window.__states")
    assert states[0] == "reconnecting" and "offline" in states and states[-1] == "connected"
    expect(page.locator("#system-status")).to_contain_text("Workers")
    assert page.evaluate(NOT_RELOADED)
    context.close()


def test_a_new_session_appears_in_an_open_list_only_where_its_filters_match(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    headers = api_headers(page)
    active = page
    active.goto("/sessions?status=queued&status=running")
    failed = page.context.new_page()
    failed.goto("/sessions?status=failed")
    for tab in (active, failed):
        tab.evaluate(MARK_PAGE)
        expect(tab.locator("#live-status")).to_have_attribute("data-state", "connected")
    [started] = start_sessions(page, headers, 1)
    row = active.locator(f"#session-{started}")
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text(re.compile("^(queued|running)$"))
    # Once it completes it no longer matches "queued or running", and leaves that list.
    expect(row).to_have_count(0, timeout=90_000)
    expect(failed.locator(f"#session-{started}")).to_have_count(0)
    for tab in (active, failed):
        assert tab.evaluate(NOT_RELOADED)


def test_the_dashboard_plot_takes_in_a_session_as_it_completes(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    headers = api_headers(page)
    page.goto("/dashboard")
    page.get_by_label("Model", exact=True).select_option(label="digits-mlp v1")
    expect(page.locator("#tradeoff")).to_contain_text("of digits-mlp v1")
    page.evaluate(MARK_PAGE)
    expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")
    [started] = start_sessions(page, headers, 1)
    # A point in each of the two plots, linking to the session; the chosen model stays.
    expect(page.locator(f'#tradeoff a[href="/sessions/{started}"]')).to_have_count(2, timeout=90_000)
    expect(page.locator("#tradeoff")).to_contain_text("of digits-mlp v1")
    assert page.evaluate(NOT_RELOADED)
