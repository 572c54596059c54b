"""What the browser tests share: the browser, the server's passwords, and logging in on
the page."""

import os

ADMIN_PASSWORD = "e2e-admin-password"
DEMO_PASSWORD = "e2e-demo-password"
CHROMIUM = os.environ.get("OPTIDECK_TEST_CHROMIUM", "/usr/bin/chromium")
# Without these Chromium keeps calling home, and this machine's closed network
# answers every attempt with an error.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def log_in(page, username="admin", password=ADMIN_PASSWORD):
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
