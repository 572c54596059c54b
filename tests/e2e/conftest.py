"""End-to-end harness: the real server, started the README's way, and headless Chromium.

The server runs `flask --app webapp serve --demo` (gunicorn) on a free port with
its own instance folder; Playwright drives Debian's /usr/bin/chromium, since
the browser builds Playwright would download cannot be fetched here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.helpers import ADMIN_PASSWORD, CHROMIUM, CHROMIUM_ARGS, DEMO_PASSWORD
from webapp.testing import Server

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The base URL of a real Optideck server with demo data (trained and optimized
    on start, which takes a while)."""
    if os.environ.get("OPTIDECK_TEST_DATABASE_URL"):
        pytest.skip("e2e runs once, on the embedded default (SQLite)")
    folder = tmp_path_factory.mktemp("e2e-server")
    server = Server(
        folder,
        {
            "OPTIDECK_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "OPTIDECK_PASSWORD": DEMO_PASSWORD,
            "OPTIDECK_SERVER_THREADS": "16",
            # One worker: sessions started together queue, so a test can catch one queued.
            "OPTIDECK_EXECUTOR_MAX_WORKERS": "1",
            # Every browser test logs in; the limit itself is tested in tests/web and tests/api.
            "OPTIDECK_SECURITY_LOGIN_RATE_LIMIT": "1000 per minute",
        },
        demo=True,
    ).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server, request):
    context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
