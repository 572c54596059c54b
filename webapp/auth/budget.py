"""The login budget: failed logins allowed per client address and per account.

The login page and `POST /api/v1/auth/token` draw on the same two budgets
(Flask-Limiter shared limits), so a guesser gets `security.login_rate_limit`
tries, not that many per endpoint. Only refused attempts count: signing in
many times a minute costs nothing.
"""

from __future__ import annotations

from flask import current_app, request
from flask_limiter.util import get_remote_address

from ..extensions import limiter

# The key of attempts that name no account: no real account has it (see USERNAME_RULE).
NO_ACCOUNT = "-"


def _limit() -> str:
    return current_app.config["OPTIDECK"]["security"]["login_rate_limit"]


def _account() -> str:
    """The account an attempt names, as the login would look it up (lower case)."""
    name = request.form.get("username")
    if name is None and request.is_json:
        # A body the JSON limits refuse (too deep, too large) names no account.
        body = request.get_json(silent=True)
        name = body.get("username") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return NO_ACCOUNT
    return name.strip().lower()[:64]


def _refused(response) -> bool:
    # Wrong credentials (401 on the API, 400 on the page) and malformed attempts; a 429
    # was turned away before it could try anything.
    return 400 <= response.status_code < 500 and response.status_code != 429


_by_address = limiter.shared_limit(
    _limit, scope="login-address", key_func=get_remote_address, methods=["POST"], deduct_when=_refused
)
_by_account = limiter.shared_limit(
    _limit, scope="login-account", key_func=_account, methods=["POST"], deduct_when=_refused
)


def login_budget(view):
    """Spend the shared budgets on this view's refused POSTs; 429 once either is spent."""
    return _by_address(_by_account(view))
