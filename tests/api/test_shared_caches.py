"""The cached answers of the session list and of bearer tokens (services/caching.py), with
two app instances sharing one Redis as two gunicorn workers would: a change made through
either reaches the other's very next request, even with every cache warm."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
from sqlalchemy import event, update

from tests.factories import gen_model, gen_session
from tests.helpers import PASSWORD, ApiClient, api_client_for
from webapp.extensions import db
from webapp.services import caching, session_runs, tokens, users
from webapp.tables import ApiToken, ModelMetadata, OptimizationSession, User, utcnow

LIST = "/api/v1/optimization/sessions"


@pytest.fixture
def pair(make_app, own_redis):
    """Two processes' apps on one database and one Redis, with an admin and two operators
    (their clients on the second app), each with models and sessions."""
    first, second = make_app(redis={"url": own_redis.url}), make_app(redis={"url": own_redis.url})
    with first.app_context():
        clients = {
            "admin": api_client_for(first, "root", "admin"),
            "alice": api_client_for(first, "alice", "operator"),
            "bob": api_client_for(first, "bob", "operator"),
        }
        a_model = gen_model(clients["alice"].user, "a-model")
        b_model = gen_model(clients["bob"].user, "b-model")
        for n in range(3):
            gen_session(a_model, clients["alice"].user, "completed", age_days=n + 1, size=10.0 * n)
        running = gen_session(a_model, clients["alice"].user, "running", heartbeat_at=utcnow())
        gen_session(b_model, clients["bob"].user, "completed", age_days=5)
        ids = {"running": running.id, "a_model": a_model.id, "b_model": b_model.id}
        ids.update({name: c.user.id for name, c in clients.items()})
    on_second = {name: ApiClient(second.test_client(), c.user, c.token) for name, c in clients.items()}
    return first, second, on_second, ids


@contextmanager
def statements(app):
    """The SQL statements `app` sends while the block runs."""
    sent: list[str] = []

    def note(conn, cursor, statement, *args):
        sent.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", note)


def warm(client, path=LIST):
    """Ask until the answer comes from the caches alone; return it."""
    for _ in range(3):
        response = client.get(path)
        assert response.status_code == 200, response.get_json()
    return response


def test_warm_caches_answer_without_the_database(pair):
    first, second, on, _ = pair
    warm(on["admin"])
    with statements(second) as sent:
        response = on["admin"].get(LIST)
    assert response.status_code == 200
    assert response.get_json()["total"] == 5
    assert sent == []  # the token and the page both came from the caches


def test_a_cached_page_is_byte_for_byte_the_uncached_answer(pair, make_app):
    first, second, on, _ = pair
    uncached = make_app()  # no Redis: nothing is cached
    query = f"{LIST}?status=completed&sort=size&order=asc&limit=2&skip=1"
    cached = warm(on["admin"], query)
    fresh = ApiClient(uncached.test_client(), None, on["admin"].token).get(query)
    assert fresh.status_code == 200
    assert cached.get_data() == fresh.get_data()
    for header in ("Content-Type", "Content-Length"):
        assert cached.headers[header] == fresh.headers[header]


def test_each_scope_gets_its_own_page(pair):
    first, second, on, _ = pair
    everything = warm(on["admin"]).get_json()
    assert everything["total"] == 5
    alice = warm(on["alice"]).get_json()
    bob = on["bob"].get(LIST).get_json()
    assert alice["total"] == 4 and {s["model_name"] for s in alice["sessions"]} == {"a-model"}
    assert bob["total"] == 1 and {s["model_name"] for s in bob["sessions"]} == {"b-model"}
    # The same query for another scope: never the page cached for the first.
    assert on["admin"].get(LIST).get_json() == everything


def test_progress_reported_in_one_process_shows_in_the_other_at_once(pair):
    first, second, on, ids = pair
    before = warm(on["alice"]).get_json()
    assert (
        next(s for s in before["sessions"] if s["session_id"] == ids["running"])["progress_percentage"] == 0
    )
    with first.app_context():
        session_runs.record_progress(ids["running"], 42.0, "pruning")
    after = on["alice"].get(LIST).get_json()
    row = next(s for s in after["sessions"] if s["session_id"] == ids["running"])
    assert (row["progress_percentage"], row["current_step"]) == (42.0, "pruning")


def test_changes_to_names_owners_and_bulk_updates_show_at_once(pair):
    first, second, on, ids = pair
    warm(on["admin"])
    warm(on["bob"])
    with first.app_context():
        db.session.get(ModelMetadata, ids["a_model"]).name = "renamed"
        db.session.commit()
    assert "renamed" in {s["model_name"] for s in on["admin"].get(LIST).get_json()["sessions"]}
    with first.app_context():
        # A bulk UPDATE: no object for the flush to see.
        db.session.execute(
            update(OptimizationSession)
            .where(OptimizationSession.id == ids["running"])
            .values(owner_id=ids["bob"])
        )
        db.session.commit()
    assert ids["running"] in {s["session_id"] for s in on["bob"].get(LIST).get_json()["sessions"]}


def test_a_revoked_token_is_refused_at_once_by_every_process(pair):
    first, second, on, ids = pair
    warm(on["alice"])
    with first.app_context():
        record = db.session.scalar(db.select(ApiToken).where(ApiToken.user_id == ids["alice"]))
        tokens.revoke(record, by=record.owner)
    response = on["alice"].get(LIST)
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_invalid"
    assert on["alice"].get(LIST).status_code == 401  # and stays refused


def test_deactivation_and_role_changes_apply_at_once_in_every_process(pair):
    first, second, on, ids = pair
    assert warm(on["admin"]).get_json()["total"] == 5
    warm(on["bob"])
    with first.app_context():
        admin = db.session.get(User, ids["admin"])
        users.set_role(db.session.get(User, ids["bob"]), "admin", by=admin)
    # Bob's token now has the admin's scope, and the admin's cached page is his.
    assert on["bob"].get(LIST).get_json()["total"] == 5
    with first.app_context():
        bob = db.session.get(User, ids["bob"])
        users.set_role(db.session.get(User, ids["admin"]), "operator", by=bob)
    assert on["admin"].get(LIST).get_json()["total"] == 0  # root owns no sessions
    with first.app_context():
        users.set_active(db.session.get(User, ids["admin"]), False, by=db.session.get(User, ids["bob"]))
    assert on["admin"].get(LIST).status_code == 401


def test_a_refreshed_token_replaces_the_old_one_at_once(pair):
    first, second, on, _ = pair
    login = first.test_client().post("/api/v1/auth/token", json={"username": "alice", "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    old = ApiClient(second.test_client(), None, login.get_json()["access_token"])
    warm(old)
    refreshed = first.test_client().post(
        "/api/v1/auth/refresh", json={"refresh_token": login.get_json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.get_json()
    assert old.get(LIST).status_code == 401
    assert (
        ApiClient(second.test_client(), None, refreshed.get_json()["access_token"]).get(LIST).status_code
        == 200
    )


def test_a_remembered_token_still_expires(pair, monkeypatch):
    first, second, on, _ = pair
    warm(on["alice"])
    later = utcnow() + timedelta(days=31)  # the tests' tokens live 30 days
    monkeypatch.setattr(tokens, "utcnow", lambda: later)
    response = on["alice"].get(LIST)
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_expired"


def test_logging_out_with_a_remembered_token_revokes_it_everywhere(pair):
    first, second, on, _ = pair
    warm(on["alice"])  # the second app now answers for her token from memory
    response = on["alice"].delete("/api/v1/auth/token")  # through that remembered copy
    assert response.status_code in (200, 204), response.get_data()
    for client in (on["alice"], ApiClient(first.test_client(), None, on["alice"].token)):
        answer = client.get(LIST)
        assert answer.status_code == 401
        assert answer.get_json()["error"] == "token_invalid"


def test_a_page_missing_from_the_caches_is_made_once_for_all_who_ask_at_that_moment(pair):
    """After a change every page is gone: the clients reading the list at that moment wait
    for one of them to make it, not each make it again."""
    first, second, on, ids = pair
    made = []
    start = threading.Barrier(8)

    def make() -> bytes:
        made.append(1)
        time.sleep(0.3)  # long enough for every other caller to arrive meanwhile
        return b'{"made": true}'

    def ask(answers: list) -> None:
        with second.app_context():
            viewer = db.session.get(User, ids["admin"])
            generation = caching.generations()["list"]
            start.wait()
            answers.append(caching.cached_page(viewer, "bench-page", generation, make))

    answers: list[bytes] = []
    threads = [threading.Thread(target=ask, args=(answers,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [b'{"made": true}'] * 8
    assert len(made) == 1


def test_a_generation_started_again_after_a_flush_never_repeats_an_old_value(pair):
    """A change that reaches an empty Redis first (restarted, flushed, evicted) starts the
    generation at the clock, as a read would: INCR alone would make it 1 after every
    flush, and a token remembered at 1 would pass again."""
    first, second, on, ids = pair
    redis_client = redis.Redis.from_url(first.config["OPTIDECK"]["redis"]["url"])
    redis_client.flushdb()
    with first.app_context():
        admin = db.session.get(User, ids["admin"])
        users.set_role(db.session.get(User, ids["bob"]), "viewer", by=admin)
    warm(on["alice"])  # remembered at the generation that change made
    redis_client.flushdb()
    with first.app_context():
        record = db.session.scalar(db.select(ApiToken).where(ApiToken.user_id == ids["alice"]))
        tokens.revoke(record, by=record.owner)
    assert on["alice"].get(LIST).status_code == 401


def test_when_redis_refuses_the_change_a_remembered_token_lasts_seconds_not_a_minute(pair, monkeypatch):
    """Redis out of memory refuses the bump but still answers reads: the revocation is
    then seen when the remembered copy runs out (REMEMBER_SECONDS), not a minute later."""
    first, second, on, ids = pair
    monkeypatch.setattr(tokens, "REMEMBER_SECONDS", 0.5)
    warm(on["alice"])
    redis_client = redis.Redis.from_url(first.config["OPTIDECK"]["redis"]["url"])
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", 1)  # every write is refused from here on
    try:
        with first.app_context():
            record = db.session.scalar(db.select(ApiToken).where(ApiToken.user_id == ids["alice"]))
            tokens.revoke(record, by=record.owner)
        time.sleep(0.6)
        assert on["alice"].get(LIST).status_code == 401
    finally:
        redis_client.config_set("maxmemory", 0)


def test_spellings_of_one_query_share_a_page(pair):
    first, second, on, _ = pair
    warm(on["admin"], f"{LIST}?status=completed&status=running&q=a-model")
    with statements(second) as sent:
        for spelling in (
            "status=running&status=completed&q=%20a-model%20",
            "status=running&status=completed&status=running&q=a-model",
        ):
            assert on["admin"].get(f"{LIST}?{spelling}").status_code == 200
    assert not [s for s in sent if "optimization_sessions" in s]
