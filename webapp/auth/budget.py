"""The login budget: failed logins allowed per client address and per account.

The login page and `POST /api/v1/auth/token` draw on the same two budgets
(Flask-Limiter shared limits), so a guesser gets `security.login_rate_limit`
tries, not that many per endpoint. Only refused attempts count: signing in
many times a minute costs nothing. Attempts on one address or account take turns,
so a burst of parallel guesses is counted guess by guess.
"""

from __future__ import annotations

import contextlib
import functools
import threading

from flask import current_app, g, request
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


class _Turns:
    """One login at a time per address and per account (in this process). The budgets are
    spent when a refusal is answered; without turns, a burst of parallel guesses would all
    pass the check before the first refusal is counted."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def taking(self, keys: list[str]):
        locks = []
        with self._lock:
            for key in sorted(set(keys)):  # one order for all: two logins never wait on each other
                lock, users = self._held.get(key, (threading.Lock(), 0))
                self._held[key] = (lock, users + 1)
                locks.append((key, lock))
        try:
            with contextlib.ExitStack() as stack:
                for _, lock in locks:
                    stack.enter_context(lock)
                yield
        finally:
            with self._lock:
                for key, lock in locks:
                    users = self._held[key][1] - 1
                    if users:
                        self._held[key] = (lock, users)
                    else:
                        del self._held[key]  # keep only the turns someone waits for


_turns = _Turns()


def login_budget(view):
    """Spend the shared budgets on this view's refused POSTs; 429 once either is spent."""
    limited = _by_address(_by_account(view))

    @functools.wraps(view)
    def in_turn(*args, **kwargs):
        if request.method == "POST":
            # Held until the request is torn down: after Flask-Limiter spends the budget
            # on a refusal (in its after-request hook), not before.
            turn = _turns.taking([f"address:{get_remote_address()}", f"account:{_account()}"])
            turn.__enter__()
            g.login_turn = turn
        return limited(*args, **kwargs)

    return in_turn


def end_turn(_exc=None) -> None:
    """teardown_request: let the next login of this address or account go."""
    turn = g.pop("login_turn", None)
    if turn is not None:
        turn.__exit__(None, None, None)
