"""Schemathesis against the served /api/v1/openapi.json, with an admin token: over a thousand
generated requests (valid and invalid data of every operation, positive and negative
generation) and every check schemathesis runs by default, response-schema conformance
among them: no 5xx, every answer as documented, valid data accepted, invalid data refused.

Left out: DELETE /api/v1/auth/token, which revokes the token it is sent with, so every
later request would be a 401 (it reads nothing but that header; tests/api/test_auth_tokens.py
covers it). Nothing that starts work needs leaving out: no generated upload is a model, so
no session can start.

Generated text holds no NUL character: the API refuses NUL in any text, query or body
(webapp/bounds.py: PostgreSQL text cannot hold it), a rule of every string that the
document would otherwise have to repeat as a pattern on each (tests/api/test_input_bounds.py
covers it).

Where valid data is refused for a reason no JSON Schema can state, positive_data_acceptance
is told that status for that operation only (POSITIVE_ALSO):
- POST /models: 422, the file must be a model (and eval_data an .npz that fits it), and
  400, input_shape must be JSON text: the content of a file or a string, not its shape.
- PUT /config/optimization-criteria: 400, the three weights must sum to 1, a rule across
  fields; and 428, the version edited must be named by the If-Match header or the body's
  `version`, the one or the other, a rule across a header and the body.
- GET /optimization/sessions (and its CSV): 400, created_from must come before created_to,
  a rule across parameters.
- GET /optimization/sessions/compare: 400, two to six ids, or a model_id with at least two
  completed sessions: the one or the other, a rule across parameters (valid ids name no
  session here: 404).
- GET /api/v1/ws: 426, a plain HTTP request (all schemathesis sends) is not a WebSocket
  handshake; the socket's messages are tested in tests/live.
"""

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

# Generated uploads that pass the schema are each opened by a sandboxed worker.
pytestmark = pytest.mark.slow

MIN_CASES = 1000
# Each upload that passes the schema is opened in a sandbox (about a second), and every
# login attempt hashes a password: fewer of those keep the run within a minute or two.
SLOW = {"POST /api/v1/models": 8, "POST /api/v1/auth/token": 10, "POST /api/v1/auth/refresh": 10}
POSITIVE_ALSO = {
    "POST /api/v1/models": ["400", "422"],
    "PUT /api/v1/config/optimization-criteria": ["400", "428"],
    "GET /api/v1/optimization/sessions": ["400"],
    "GET /api/v1/optimization/sessions/export.csv": ["400"],
    "GET /api/v1/optimization/sessions/compare": ["400"],
    "GET /api/v1/ws": ["426"],
}
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]


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
    operations = [
        {
            "include-name": name,
            **({"generation": {"max-examples": SLOW[name]}} if name in SLOW else {}),
            **(
                {
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": ACCEPTED + POSITIVE_ALSO[name]}
                    }
                }
                if name in POSITIVE_ALSO
                else {}
            ),
        }
        for name in {**SLOW, **POSITIVE_ALSO}
    ]
    config = schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {admin.token}"},
            "generation": {
                "mode": "all",
                "max-examples": 50,
                "deterministic": True,
                "database": "none",
                "allow-x00": False,
            },
            "operations": operations,
        }
    )
    loaded = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)
    app.wsgi_app = recording(app.wsgi_app, answered)  # from here on, only generated requests
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema").exclude(name="DELETE /api/v1/auth/token")


@schema.parametrize()
@settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_pass_every_default_check(case):
    case.call_and_validate()
