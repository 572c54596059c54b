"""A person logs in, finds their way around, and logs out."""

from playwright.sync_api import expect

from tests.e2e.helpers import DEMO_PASSWORD, log_in


def test_log_in_see_the_dashboard_and_log_out(page):
    log_in(page)
    expect(page).to_have_url("/dashboard")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_text("Welcome, admin.")).to_be_visible()
    for label, heading in [
        ("Sessions", "Optimization sessions"),
        ("Models", "Models"),
        ("Configuration", "Configuration"),
    ]:
        page.get_by_role("navigation", name="Main").get_by_role("link", name=label).click()
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url("/login")
    expect(page.get_by_text("You are logged out.")).to_be_visible()
    page.goto("/dashboard")
    expect(page).to_have_url("/login?next=%2Fdashboard")


def test_wrong_password_stays_on_the_login_page_with_a_message(page):
    log_in(page, password="not-the-password")
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    expect(page.get_by_label("Username")).to_have_value("admin")


def test_a_viewer_creates_and_revokes_an_api_token(page):
    log_in(page, "demo-viewer", DEMO_PASSWORD)
    page.get_by_role("banner").get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("laptop script")
    page.get_by_label("Read-only").check()
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token-value").inner_text()
    assert token.startswith("odk_")
    response = page.request.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
    assert response.ok
    row = page.get_by_role("row", name="laptop script")
    expect(row.get_by_text("read-only")).to_be_visible()
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("Token “laptop script” revoked.")).to_be_visible()
    expect(page.get_by_role("row", name="laptop script").get_by_text("revoked")).to_be_visible()


def test_admin_filters_the_audit_trail_without_a_reload(page):
    log_in(page)
    page.get_by_role("link", name="Audit").click()
    # Until the new page has loaded, htmx has not wired the form and a change does nothing.
    page.wait_for_url("**/admin/audit")
    page.get_by_label("Outcome").select_option("allowed")
    expect(page).to_have_url("/admin/audit?user=&action=&outcome=allowed")
    expect(page.locator("#audit-table .badge.denied")).to_have_count(0)
    page.go_back()
    expect(page).to_have_url("/admin/audit")


def test_an_operator_uploads_a_model_and_reads_its_analysis(page, demo_files):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    page.get_by_label("Model file").set_input_files(str(demo_files["onnx"]))
    page.get_by_label("Evaluation data").set_input_files(str(demo_files["eval"]))
    page.get_by_label("Name").fill("uploaded-in-a-browser")
    page.get_by_role("button", name="Upload and analyse").click()
    expect(page.get_by_role("heading", name="uploaded-in-a-browser")).to_be_visible()
    expect(page.get_by_text("analysed as onnx")).to_be_visible()
    expect(page.get_by_role("cell", name="Gemm")).to_be_visible()


def test_a_pickle_upload_is_refused_with_the_reason(page, tmp_path):
    log_in(page, "demo-operator", DEMO_PASSWORD)
    page.goto("/models")
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"\x80\x04K\x01.")
    page.get_by_label("Model file").set_input_files(str(checkpoint))
    page.get_by_role("button", name="Upload and analyse").click()
    expect(page.locator("#file-error")).to_contain_text("pickle")
    # The form stays as it was: the chosen file and the typed name are there for the next try.
    assert page.get_by_label("Model file").evaluate("input => input.files.length") == 1
    expect(page.get_by_text("Your files are still chosen")).to_be_visible()


def test_the_same_file_again_says_it_is_the_same_model(page, demo_files):
    log_in(page, "demo-operator", DEMO_PASSWORD)

    def upload():
        page.goto("/models")
        page.get_by_label("Model file").set_input_files(str(demo_files["onnx"]))
        page.get_by_label("Name").fill("uploaded-twice")
        page.get_by_role("button", name="Upload and analyse").click()

    upload()
    expect(page.get_by_role("heading", name="uploaded-twice")).to_be_visible()
    upload()
    expect(page.locator("#file-error")).to_contain_text("same model as uploaded-twice v1")
    expect(page.get_by_label("Name")).to_have_value("uploaded-twice")
