"""Schemathesis against the served /api/v1/openapi.json, with an admin token: over a thousand
generated requests (valid, invalid and boundary values of every operation) and not one 5xx.

Left out: GET /api/v1/ws, a WebSocket that plain requests only see refuse the upgrade (its
messages are tested in tests/live), and DELETE /api/v1/auth/token, which revokes the token
it is sent with, so every later request would be a 401 (it reads nothing but that header;
tests/api/test_auth_tokens.py covers it). Nothing that starts work needs leaving out: no
generated upload is a model, so no session can start.
"""

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

# Generated uploads that pass the schema are each opened by a sandboxed worker.
pytestmark = pytest.mark.slow

MIN_CASES = 1000
# Each upload that passes the schema is opened in a sandbox (about a second), and every
# login attempt hashes a password: fewer of those keep the run within a minute or two.
SLOW = {"POST /api/v1/models": 8, "POST /api/v1/auth/token": 10, "POST /api/v1/auth/refresh": 10}


def recording(wsgi_app, statuses: Counter):
    """WSGI middleware: the status of every request that reaches the app."""

    def app(environ, start_response):
        def record(status, headers, exc_info=None):
            statuses[(environ["REQUEST_METHOD"], int(status.split()[0]))] += 1
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, record)

    return app


@pytest.fixture
def answered():
    """What the app answered; checked once every operation ran."""
    statuses = Counter()
    yield statuses
    sent = sum(statuses.values())
    print(f"\nschemathesis: {sent} generated requests; answers: {sorted(statuses.items())}")  # with -s
    assert sent >= MIN_CASES, f"only {sent} requests: {statuses}"
    assert not [status for (_, status) in statuses if status >= 500]


@pytest.fixture
def api_schema(app, api_client, answered):
    admin = api_client("admin")
    slow = [{"include-name": name, "generation": {"max-examples": n}} for name, n in SLOW.items()]
    config = schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {admin.token}"},
            "generation": {"mode": "all", "max-examples": 50, "deterministic": True, "database": "none"},
            "operations": slow,
        }
    )
    loaded = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)
    app.wsgi_app = recording(app.wsgi_app, answered)  # from here on, only generated requests
    return loaded


schema = (
    schemathesis.pytest.from_fixture("api_schema")
    .exclude(path="/api/v1/ws")
    .exclude(name="DELETE /api/v1/auth/token")
)


@schema.parametrize()
@settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])
