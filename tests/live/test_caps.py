"""Sockets cannot starve the server: an auth deadline, and caps per process, account and address."""

import contextlib
import json
import time

import pytest
import sqlalchemy.exc

from tests.helpers import AuthActions
from tests.live.wsclient import browser_socket, closed_within, connect, receive_json, serving, token_for
from webapp.live.admission import Admission, Refused

pytestmark = pytest.mark.slow  # each test serves its own app

TRY_AGAIN_LATER = 1013
POLICY_VIOLATION = 1008


def test_a_socket_that_does_not_authenticate_is_closed_after_the_deadline(make_app):
    app = make_app(live={"auth_timeout_seconds": 1})
    with app.app_context(), serving(app) as address:
        ws = connect(address)
        started = time.monotonic()
        code, reason, seen = closed_within(ws, 3)
        assert 0.9 < time.monotonic() - started < 2.5
        assert (code, reason) == (POLICY_VIOLATION, "authentication timed out")
        assert json.loads(seen[-1])["data"]["error"] == "token_missing"


def test_a_full_worker_refuses_new_sockets_with_try_again_later(make_app):
    """With server.threads - reserved_threads sockets open, is the next one refused at once
    with 1013 (which browsers reconnect after), waiting strangers counted too?"""
    app = make_app(server={"threads": 4}, live={"reserved_threads": 2})
    with app.app_context(), serving(app) as address:
        _, token = token_for("ada")
        stream = connect(address, token)
        receive_json(stream)
        stranger = connect(address)  # not authenticated yet: it holds a thread all the same
        started = time.monotonic()
        code, reason, _ = closed_within(connect(address, token), 2)
        assert (code, reason) == (TRY_AGAIN_LATER, "server busy, try again later")
        assert time.monotonic() - started < 1
        stream.close()
        # A freed place is taken again.
        deadline = time.monotonic() + 5
        while True:
            retry = connect(address, token)
            message = retry.receive(timeout=1) if retry.connected else None
            if message is not None:
                assert json.loads(message)["event"] == "system_status"
                break
            assert time.monotonic() < deadline, "the closed socket's place was never freed"
        retry.close()
        stranger.close()


def test_one_account_may_hold_only_so_many_sockets(make_app):
    """Is a third socket of one account refused (1008), whichever endpoint, while another
    account still connects?"""
    app = make_app(live={"max_per_user": 2})
    with app.app_context(), serving(app) as address:
        _, ada_token = token_for("ada")
        _, bob_token = token_for("bob")
        first = connect(address, ada_token)
        receive_json(first)
        browser = app.test_client()
        AuthActions(browser).login("ada")
        page = browser_socket(address, "/ws?page=dashboard", browser.get_cookie("session"))
        assert page.receive(timeout=5) is not None  # the dashboard's snapshot
        code, reason, _ = closed_within(connect(address, ada_token), 2)
        assert (code, reason) == (POLICY_VIOLATION, "too many connections for this account")
        bob = connect(address, bob_token)
        assert receive_json(bob)["event"] == "system_status"
        for ws in (first, page, bob):
            ws.close()


def test_one_address_may_hold_only_so_many_sockets_even_unauthenticated(make_app):
    app = make_app(live={"max_per_address": 2, "auth_timeout_seconds": 2})
    with app.app_context(), serving(app) as address:
        _, token = token_for("ada")
        waiting = [connect(address), connect(address)]
        time.sleep(0.3)  # both handshakes are counted
        code, reason, _ = closed_within(connect(address, token), 2)
        assert (code, reason) == (POLICY_VIOLATION, "too many connections from this address")
        for ws in waiting:
            closed_within(ws, 4)  # their deadline passes
        ws = connect(address)
        ws.send(json.dumps({"action": "auth", "token": token}))
        assert receive_json(ws)["event"] == "system_status"
        ws.close()


def test_one_address_cannot_fill_the_pool_of_sockets_waiting_to_authenticate(make_app):
    """A flood of unauthenticated sockets from one address takes at most half of the
    waiting pool: a script elsewhere that authenticates by message still gets in."""
    admission = Admission(make_app().config["OPTIDECK"])  # 32 threads - 4: 28 sockets, 7 waiting
    with contextlib.ExitStack() as held:
        for _ in range(admission.waiting_per_address):
            held.enter_context(admission.ticket("203.0.113.9", waiting=True))
        with pytest.raises(Refused) as refused, admission.ticket("203.0.113.9", waiting=True):
            pass
        assert (refused.value.code, refused.value.reason) == (
            POLICY_VIOLATION,
            "too many unauthenticated connections from this address",
        )
        # Another address still finds room, and the flooder may still authenticate by header.
        with admission.ticket("198.51.100.7", waiting=True), admission.ticket("203.0.113.9") as ticket:
            ticket.claim(1)
        # Once authenticated, a socket leaves the waiting pool and frees its address's share.
        with admission.ticket("198.51.100.7", waiting=True) as ticket:
            ticket.claim(2)
            for _ in range(admission.waiting_per_address):
                held.enter_context(admission.ticket("198.51.100.7", waiting=True))


def test_a_socket_that_finds_the_database_pool_exhausted_is_told_to_come_back(make_app, monkeypatch):
    """An overloaded process (every database connection busy for the pool's timeout)
    closes a new socket with 1013, which browsers retry after, not with an error."""
    app = make_app()
    with app.app_context(), serving(app) as address:
        _, token = token_for("ada")

        def exhausted(header):
            raise sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")

        monkeypatch.setattr("webapp.services.tokens.authenticate", exhausted)
        code, reason, _ = closed_within(connect(address, token), 5)
        assert (code, reason) == (TRY_AGAIN_LATER, "server busy, try again later")
