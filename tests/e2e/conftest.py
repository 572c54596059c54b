"""End-to-end harness: the real server, started the README's way, and headless Chromium.

The server runs `flask --app webapp serve --demo` (gunicorn) on a free port with
its own instance folder; Playwright drives Debian's /usr/bin/chromium, since
the browser builds Playwright would download cannot be fetched here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from webapp.config import ROOT

CHROMIUM = os.environ.get("OPTIDECK_TEST_CHROMIUM", "/usr/bin/chromium")
# Without these Chromium keeps calling home, and this machine's closed network
# answers every attempt with an error.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ADMIN_PASSWORD = "e2e-admin-password"
DEMO_PASSWORD = "e2e-demo-password"
ARTIFACTS = ROOT / "test-artifacts"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - localhost
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server not up after {seconds}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The base URL of a real Optideck server with demo data (trained and optimized
    on start, which takes a while)."""
    if os.environ.get("OPTIDECK_TEST_DATABASE_URL"):
        pytest.skip("e2e runs once, on the embedded default (SQLite)")
    folder = tmp_path_factory.mktemp("e2e-server")
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPTIDECK_")},
        "OPTIDECK_APP_INSTANCE_DIR": str(folder),
        "OPTIDECK_SERVER_PORT": str(port),
        "OPTIDECK_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "OPTIDECK_PASSWORD": DEMO_PASSWORD,
        "OPTIDECK_SERVER_THREADS": "8",
        # One worker: sessions started together queue, so a test can catch one queued.
        "OPTIDECK_EXECUTOR_MAX_WORKERS": "1",
        # Every browser test logs in; the limit itself is tested in tests/web and tests/api.
        "OPTIDECK_SECURITY_LOGIN_RATE_LIMIT": "1000 per minute",
    }
    log = folder / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "webapp", "serve", "--demo"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base_url + "/healthz", process, log)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def log_in(page, username="admin", password=ADMIN_PASSWORD):
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
