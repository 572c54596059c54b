"""The criteria page in a real browser: edit, an invalid value, a stale save, revert.

These tests change the shared server's criteria; each starts from whatever
version is current and only asserts what it did itself.
"""

import re

from playwright.sync_api import expect

from tests.e2e.helpers import log_in


def current_version(page) -> int:
    heading = page.get_by_role("heading", name=re.compile(r"Optimization criteria · version \d+"))
    return int(re.search(r"version (\d+)", heading.inner_text()).group(1))


def test_an_invalid_value_is_flagged_while_editing_then_a_save_makes_a_version(page):
    log_in(page)
    page.goto("/config")
    version = current_version(page)
    page.get_by_label("Threads").fill("0")
    page.get_by_label("Threads").blur()
    expect(page.locator("#threads-error")).to_be_visible()
    expect(page.get_by_text("Unsaved changes")).to_be_visible()
    page.get_by_label("Threads").fill("2")
    page.get_by_label("Threads").blur()
    expect(page.locator("#threads-error")).to_have_count(0)
    page.get_by_role("button", name=re.compile("Save as version")).click()
    expect(page.get_by_text(f"Saved the criteria as version {version + 1}.")).to_be_visible()
    expect(page.get_by_label("Threads")).to_have_value("2")


def test_a_stale_save_shows_what_changed_and_revert_restores(page, browser, server):
    log_in(page)
    page.goto("/config")
    version = current_version(page)
    # Someone else saves in another browser while this one edits.
    other = browser.new_context(base_url=server).new_page()
    log_in(other)
    other.goto("/config")
    other.get_by_label("Description").fill("changed in the other tab")
    other.get_by_role("button", name=re.compile("Save as version")).click()
    expect(other.get_by_text(f"Saved the criteria as version {version + 1}.")).to_be_visible()
    other.context.close()

    page.get_by_label("Latency batch size").fill("16")
    page.get_by_role("button", name=re.compile("Save as version")).click()
    expect(page.get_by_role("alert")).to_contain_text(f"version {version + 1} was saved while")
    expect(page.get_by_role("alert")).to_contain_text("changed in the other tab")
    expect(page.get_by_label("Latency batch size")).to_have_value("16")  # nothing typed is lost
    # One deliberate step resolves it: saving again stores the form over the other save.
    page.get_by_role("button", name=f"Save as version {version + 2}").click()
    expect(page.get_by_text(f"Saved the criteria as version {version + 2}.")).to_be_visible()
    expect(page.get_by_label("Latency batch size")).to_have_value("16")

    page.goto(f"/config/versions/{version}")
    messages = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name=re.compile(f"Restore version {version}")).click()
    expect(page.get_by_text(f"Version {version} restored as version {version + 3}.")).to_be_visible()
    assert messages == [f"Restore version {version} as version {version + 3}? New sessions will run with it."]
    expect(page.get_by_label("Description")).not_to_have_value("changed in the other tab")
