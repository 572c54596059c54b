"""A page whose session ends elsewhere says so, and stops claiming to be live."""

from playwright.sync_api import expect

from tests.e2e.helpers import DEMO_PASSWORD, log_in


def test_logging_out_in_one_tab_ends_the_other_tabs_live_page(page):
    log_in(page, "demo-viewer", DEMO_PASSWORD)
    page.goto("/sessions")
    other = page.context.new_page()
    other.goto("/dashboard")
    expect(other.locator("#live-status")).to_have_attribute("data-state", "connected")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url("/login")

    expect(other.locator("#toasts")).to_contain_text("Your session has ended; log in again.", timeout=10_000)
    status = other.locator("#live-status")
    expect(status).to_have_attribute("data-state", "offline")
    expect(status).to_have_text("● not live, reload the page")
    other.locator("#toasts").get_by_role("link", name="Log in").click()
    expect(other).to_have_url("/login")
