"""Sessions in a real browser: filter, page, go back, start, cancel, download."""

import re

from playwright.sync_api import expect

from tests.e2e.helpers import DEMO_PASSWORD, log_in


def test_filter_and_page_without_reloading_and_go_back(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    page.goto("/sessions?limit=2")
    expect(page.locator(".pager")).to_contain_text("1–2 of")
    page.get_by_role("link", name="Next ›").click()
    expect(page).to_have_url(re.compile(r"skip=2"))
    expect(page.locator(".pager")).to_contain_text("3–4 of")
    page.go_back()
    expect(page).to_have_url("/sessions?limit=2")
    expect(page.locator(".pager")).to_contain_text("1–2 of")

    page.goto("/sessions")
    page.get_by_label("failed").check()
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(page.locator("#session-list tbody tr .badge.completed")).to_have_count(0)
    page.get_by_label("failed").uncheck()
    page.get_by_label("completed").check()
    expect(page).to_have_url(re.compile(r"status=completed"))
    expect(page.locator("#session-list .badge.completed").first).to_be_visible()
    page.go_back()  # before "completed" was ticked
    page.go_back()  # while "failed" was ticked
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(page.get_by_text("No session matches these filters")).to_be_visible()


def test_an_invalid_date_range_is_explained_in_place(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    page.goto("/sessions")
    page.get_by_label("Created from").fill("2026-12-02")
    page.get_by_label("Created to").fill("2026-12-01")
    expect(page.get_by_role("alert")).to_contain_text("created_to")


def test_start_then_download_the_optimized_model(page, tmp_path):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    page.goto("/sessions")
    page.locator("#start_model_id").select_option(label="digits-cnn v1 (onnx, with evaluation data)")
    page.get_by_label("Quantization").check()
    page.get_by_role("button", name="Start session").click()
    expect(page.get_by_role("heading", name=re.compile(r"Session #\d+"))).to_be_visible()
    for _ in range(60):
        if page.get_by_role("link", name=re.compile("Download optimized model")).count():
            break
        page.wait_for_timeout(1000)
        page.reload()
    with page.expect_download() as download_info:
        page.get_by_role("link", name=re.compile("Download optimized model")).click()
    download = download_info.value
    assert download.suggested_filename.endswith("-optimized.onnx")
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    assert target.stat().st_size > 1000


def test_cancel_a_queued_session(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    token = page.request.post(
        "/api/v1/auth/token", data={"username": "demo-operator", "password": DEMO_PASSWORD}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    models = page.request.get("/api/v1/models", headers=headers).json()["models"]
    mlp = next(m for m in models if m["name"] == "digits-mlp")
    ids = [
        page.request.post(
            "/api/v1/optimization/sessions",
            headers=headers,
            data={
                "model_id": mlp["model_id"],
                "techniques": ["compression", "pruning", "quantization"],
            },
        ).json()["session_id"]
        for _ in range(4)
    ]
    page.goto(f"/sessions/{ids[-1]}")
    expect(page.locator(".status-line .badge")).to_have_text("queued")
    # Cancelling asks first: dismissed, nothing happens; accepted, the session is cancelled.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Cancel session").click()
    expect(page.locator(".status-line .badge")).to_have_text("queued")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel session").click()
    expect(page.locator(".status-line .badge")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel session")).to_have_count(0)


def test_find_the_best_shows_the_front_live_and_downloads_a_candidate(page, tmp_path):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    page.goto("/sessions")
    page.locator("#start_model_id").select_option(label="digits-mlp v1 (onnx, with evaluation data)")
    page.get_by_label(re.compile("Search every technique")).check()
    page.get_by_label(re.compile("Time budget")).fill("2")
    page.get_by_role("button", name="Start session").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Search: \d+ candidates?"))).to_be_visible()
    # No reload: the front, the plots and the chosen row arrive over the live socket.
    chosen = page.locator("#search-front tr.chosen")
    expect(chosen).to_be_visible(timeout=180_000)
    expect(page.locator("#search-front svg")).to_have_count(2)
    with page.expect_download() as download_info:
        chosen.get_by_role("link", name="Download").click()
    download = download_info.value
    assert re.search(r"-candidate\d+\.onnx$", download.suggested_filename)
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    assert target.stat().st_size > 1000


def test_filters_and_sort_follow_the_url_through_header_sorting_and_back(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    page.goto("/sessions")
    page.get_by_label("completed").check()
    expect(page).to_have_url(re.compile(r"status=completed"))
    page.locator("#session-list th").get_by_role("link", name="Speed-up").click()
    expect(page).to_have_url(re.compile(r"sort=speed"))
    expect(page.get_by_label("Sort by")).to_have_value("speed")
    # A filter changed after a header sort keeps the sort.
    page.get_by_label("failed").check()
    expect(page).to_have_url(
        re.compile(r"status=completed&status=failed.*sort=speed|sort=speed.*status=failed")
    )
    page.go_back()
    expect(page).to_have_url(re.compile(r"sort=speed"))
    expect(page.get_by_label("failed")).not_to_be_checked()
    expect(page.get_by_label("completed")).to_be_checked()
    page.go_back()
    expect(page).to_have_url(re.compile(r"/sessions\?status=completed$"))
    expect(page.get_by_label("Sort by")).to_have_value("created")
    expect(page.get_by_label("completed")).to_be_checked()
    page.go_back()
    expect(page).to_have_url(re.compile(r"/sessions$"))
    expect(page.get_by_label("completed")).not_to_be_checked()


def test_pick_two_sessions_and_compare_them(page):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    page.goto("/sessions")
    page.get_by_role("link", name="Compare sessions").click()
    picks = page.locator("#pick tbody input[type=checkbox]")
    picks.nth(0).check()
    picks.nth(1).check()
    page.get_by_role("button", name="Compare").click()
    expect(page).to_have_url(re.compile(r"/sessions/compare\?ids=\d+&ids=\d+"))
    table = page.locator("#comparison table")
    expect(table.get_by_role("columnheader", name=re.compile(r"Session #\d+"))).to_have_count(2)
    for row in ("What was applied", "Size reduction", "Speed-up", "Accuracy retained", "Criteria version"):
        expect(table.get_by_role("rowheader", name=re.compile(row))).to_be_visible()
    expect(page.locator("#comparison svg")).to_have_count(2)
    # The chosen sessions stay ticked, to add or remove one and compare again.
    expect(page.locator("#pick tbody input:checked")).to_have_count(2)
