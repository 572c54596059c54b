"""The dashboard: scoped numbers, cached and cleared on change, resilient to a failing part."""

from sqlalchemy import text

from tests.factories import gen_model, gen_session
from tests.helpers import make_user
from webapp.extensions import db
from webapp.services import caching, dashboard


def test_the_page_shows_cards_active_sessions_and_the_latest_models_trade_offs(operator):
    older, model = gen_model(operator.user, "older"), gen_model(operator.user, "m")
    gen_session(older, operator.user, "completed", age_days=5)
    gen_session(model, operator.user, "running")
    sessions = [
        gen_session(model, operator.user, "completed", age_days=n, size=60.0 + n, speed=100.0)
        for n in range(3)
    ]
    text_ = operator.client.get("/dashboard").get_data(as_text=True)
    assert "Active sessions" in text_ and 'class="meter' in text_
    assert "58.2 %" in text_  # the average size reduction: 50, 60, 61 and 62 %
    # The model that finished a session last is plotted: a point per session, each a link.
    assert "latest 3 completed sessions of m v1" in text_
    for s in sessions:
        assert f'<a href="/sessions/{s.id}" aria-label=' in text_
    assert text_.count('class="point ') == 6  # three sessions, two plots


def test_another_models_trade_offs_come_as_a_partial(operator):
    older, model = gen_model(operator.user, "older"), gen_model(operator.user, "m")
    first = gen_session(older, operator.user, "completed", age_days=5)
    gen_session(model, operator.user, "completed")
    partial = operator.client.get(f"/dashboard?model={older.id}", headers={"HX-Request": "true"})
    text_ = partial.get_data(as_text=True)
    assert text_.lstrip().startswith('<section class="panel" id="tradeoff">')
    assert "of older v1" in text_ and f'<a href="/sessions/{first.id}" aria-label=' in text_
    # Without JavaScript the same choice reloads the whole page.
    assert "of older v1" in operator.client.get(f"/dashboard?model={older.id}").get_data(as_text=True)


def test_an_empty_install_shows_zeros_and_no_plot(operator):
    text_ = operator.client.get("/dashboard").get_data(as_text=True)
    assert "No completed session yet" in text_
    assert "No optimization sessions yet" in text_


def test_stats_are_cached_until_a_session_changes_state(app, operator, api_client):
    caller = api_client("operator")
    model = gen_model(caller.user, "m")
    first = caller.get("/api/v1/dashboard/stats").get_json()
    # A row written behind the services' back is not seen while the cache holds...
    gen_session(model, caller.user, "completed")
    assert caller.get("/api/v1/dashboard/stats").get_json()["total_sessions"] == first["total_sessions"]
    # ...and a state change through the services clears it.
    caching.invalidate()
    assert caller.get("/api/v1/dashboard/stats").get_json()["total_sessions"] == 1


def test_a_failing_part_is_named_and_the_rest_still_shows(app, api_client, operator):
    caller = api_client("admin")
    gen_session(gen_model(caller.user, "m"), caller.user, "completed")
    cascade = " CASCADE" if db.engine.dialect.name == "postgresql" else ""
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE models" + cascade))
    body = caller.get("/api/v1/dashboard/stats").get_json()
    assert body["unavailable"] == ["total_models"]
    assert body["total_models"] is None
    assert body["total_sessions"] == 1
    page = operator.client.get("/dashboard")
    assert page.status_code == 200
    assert "unavailable right now" in page.get_data(as_text=True)


def test_with_redis_a_change_in_one_process_clears_every_process(make_app):
    """Two app instances (as two gunicorn workers) share the cache through Redis."""
    import redis

    url = "redis://127.0.0.1:6379/14"
    redis.Redis.from_url(url).flushdb()
    first, second = make_app(redis={"url": url}), make_app(redis={"url": url})
    with first.app_context():
        user = make_user("watcher", "admin")
        assert dashboard.cached_stats(user)["total_models"] == 0
        gen_model(user, "m")
        assert dashboard.cached_stats(user)["total_models"] == 0  # still cached
    with second.app_context():
        caching.invalidate()
    with first.app_context():
        assert dashboard.cached_stats(db.session.merge(user))["total_models"] == 1
