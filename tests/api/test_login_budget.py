"""One budget of failed logins per address and per account, shared by /login and the API."""

import pytest

from tests.helpers import PASSWORD, csrf_from, make_user

WRONG = "wrong-password"


def from_address(app, address: str):
    """A client at another address. X-Forwarded-For is not trusted, so the address the
    limits see is the connection's own (REMOTE_ADDR)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def on_page(client, username, password=WRONG):
    token = csrf_from(client, "/login")
    return client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    ).status_code


def on_api(client, username, password=WRONG):
    return client.post("/api/v1/auth/token", json={"username": username, "password": password}).status_code


def test_failures_on_the_page_and_the_api_spend_one_budget(app):
    """Do 10 failures, half on the page and half on the API, close both to that client?"""
    make_user("ada")
    client = app.test_client()
    codes = [on_page(client, "ada") if n % 2 else on_api(client, "ada") for n in range(10)]
    assert sorted(set(codes)) == [400, 401]
    assert on_page(client, "ada") == 429
    assert on_api(client, "ada") == 429
    refused = client.post("/api/v1/auth/token", json={"username": "ada", "password": "x"})
    assert refused.get_json()["error"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    page = client.post(
        "/login", data={"username": "ada", "password": "x", "csrf_token": csrf_from(client, "/login")}
    )
    assert page.status_code == 429 and "Retry-After" in page.headers
    # A forwarded-for header names no other address: it is not trusted.
    spoofed = client.post(
        "/api/v1/auth/token",
        json={"username": "bob", "password": "x"},
        headers={"X-Forwarded-For": "192.0.2.1"},
    )
    assert spoofed.status_code == 429


def test_another_address_has_its_own_budget_but_not_for_the_same_account(app):
    make_user("ada")
    make_user("bob")
    first = from_address(app, "198.51.100.7")
    for n in range(10):
        (on_page if n % 2 else on_api)(first, "ADA ")  # the name as the login reads it
    second = from_address(app, "203.0.113.9")
    # The account's budget is spent, whoever asks and however right the password is...
    assert on_api(second, "ada", PASSWORD) == 429
    assert on_page(second, "Ada", PASSWORD) == 429
    # ...while this address may still try other accounts, and the first address may not.
    assert on_api(second, "bob", PASSWORD) == 200
    assert on_api(first, "bob", PASSWORD) == 429


def test_successful_logins_spend_nothing(make_app):
    app = make_app(security={"login_rate_limit": "3 per minute"})
    with app.app_context():
        make_user("ada")
    client = app.test_client()
    for _ in range(3):
        assert on_api(client, "ada", PASSWORD) == 200
        assert on_page(client, "ada", PASSWORD) == 302
        client.post("/logout", data={"csrf_token": csrf_from(client, "/dashboard")})
    assert [on_api(client, "ada") for _ in range(4)] == [401, 401, 401, 429]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ('{"username": "ada", ', "application/json"),
        ("[1, 2]", "application/json"),
        ('{"username": 12, "password": "x"}', "application/json"),
        ("[" * 100_000 + "]" * 100_000, "application/json"),
        ("username=ada&password=x", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_attempts_are_answered_and_counted(make_app, body, content_type):
    """Does a body the budget cannot read a name from still get a 4xx, and spend the
    address's budget?"""
    client = make_app(security={"login_rate_limit": "2 per minute"}).test_client()
    codes = [
        client.post("/api/v1/auth/token", data=body, content_type=content_type).status_code for _ in range(3)
    ]
    assert all(400 <= code < 500 for code in codes), codes
    assert codes[-1] == 429


def test_a_burst_of_parallel_guesses_gets_no_more_than_the_budget(make_app):
    """Guesses sent all at once are counted one by one: no more than the budget is tried."""
    import threading

    app = make_app(security={"login_rate_limit": "5 per minute"})
    with app.app_context():
        make_user("ada")
    results, start = [], threading.Barrier(20)

    def guess():
        client = app.test_client()
        start.wait()
        results.append(on_api(client, "ada"))

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [401] * 5 + [429] * 15
