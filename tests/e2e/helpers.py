"""What the browser tests share: the server's passwords, and logging in on the page."""

ADMIN_PASSWORD = "e2e-admin-password"
DEMO_PASSWORD = "e2e-demo-password"


def log_in(page, username="admin", password=ADMIN_PASSWORD):
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
