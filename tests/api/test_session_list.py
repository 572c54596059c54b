"""GET /api/v1/optimization/sessions and /api/v1/dashboard/stats: filters, pages, roles."""

import pytest

from tests.factories import gen_model, gen_session


@pytest.fixture
def world(app, api_client):
    """Two operators with models and sessions of every kind, a viewer and an admin."""
    alice, bob = api_client("operator"), api_client("operator")
    viewer, admin = api_client("viewer"), api_client("admin")
    a_model, b_model = gen_model(alice.user, "a-model"), gen_model(bob.user, "b-model")
    for n in range(7):
        gen_session(a_model, alice.user, "completed", age_days=n, size=10.0 * n, speed=5.0 * n)
    gen_session(a_model, alice.user, "failed", age_days=1, error_type="worker_lost")
    gen_session(a_model, alice.user, "running", age_days=0)
    gen_session(b_model, bob.user, "queued", age_days=3)
    gen_session(b_model, bob.user, "completed", age_days=10, size=90.0, speed=300.0)
    return {
        "alice": alice,
        "bob": bob,
        "viewer": viewer,
        "admin": admin,
        "a_model": a_model,
        "b_model": b_model,
    }


def listing(caller, query=""):
    return caller.get("/api/v1/optimization/sessions" + query)


def test_operators_see_their_own_and_admins_everything(world):
    assert listing(world["alice"]).get_json()["total"] == 9
    assert listing(world["bob"]).get_json()["total"] == 2
    assert listing(world["admin"]).get_json()["total"] == 11
    assert listing(world["viewer"]).get_json()["total"] == 11


def test_each_session_has_the_design_fields(world):
    session = listing(world["alice"], "?limit=1").get_json()["sessions"][0]
    for field in (
        "session_id",
        "model_id",
        "model_name",
        "status",
        "progress_percentage",
        "techniques",
        "size_reduction_percent",
        "speed_improvement_percent",
        "created_at",
        "updated_at",
        "completed_at",
    ):
        assert field in session
    assert session["model_name"] == "a-model"


@pytest.mark.parametrize(
    ("query", "total"),
    [
        ("?status=completed", 8),
        ("?status=failed&status=running", 2),
        ("?status=queued", 1),
        ("?owner=api-operator-1", 2),
    ],
)
def test_filters(world, query, total):
    body = listing(world["admin"], query).get_json()
    assert body["total"] == total
    assert len(body["sessions"]) == total


def test_model_filter(world):
    body = listing(world["admin"], f"?model_id={world['b_model'].id}").get_json()
    assert {s["model_name"] for s in body["sessions"]} == {"b-model"}


def test_date_range_is_inclusive_of_the_last_day(world):
    from webapp.tables import utcnow

    today = utcnow().date().isoformat()
    body = listing(world["alice"], f"?created_from={today}&created_to={today}").get_json()
    assert body["total"] == 2  # made today: one completed, one running
    assert all(s["created_at"].startswith(today) for s in body["sessions"])


def test_sorting_by_size_puts_missing_values_last(world):
    sizes = [
        s["size_reduction_percent"]
        for s in listing(world["alice"], "?sort=size&order=desc").get_json()["sessions"]
    ]
    numbers = [v for v in sizes if v is not None]
    assert numbers == sorted(numbers, reverse=True)
    assert sizes[len(numbers) :] == [None] * (len(sizes) - len(numbers))
    ascending = [
        s["size_reduction_percent"]
        for s in listing(world["alice"], "?sort=size&order=asc").get_json()["sessions"]
    ]
    assert [v for v in ascending if v is not None] == sorted(numbers)


@pytest.mark.parametrize(
    ("query", "count", "first_skip"),
    [
        ("?limit=4", 4, 0),  # first page
        ("?limit=4&skip=8", 1, 8),  # last page, partly filled
        ("?limit=4&skip=9", 0, 9),  # beyond the end
        ("?limit=100", 9, 0),  # everything on one page
    ],
)
def test_pagination_edges(world, query, count, first_skip):
    body = listing(world["alice"], query).get_json()
    assert (len(body["sessions"]), body["total"], body["skip"]) == (count, 9, first_skip)


def test_pages_do_not_overlap(world):
    seen = []
    for skip in (0, 4, 8):
        seen += [
            s["session_id"] for s in listing(world["alice"], f"?limit=4&skip={skip}").get_json()["sessions"]
        ]
    assert len(seen) == len(set(seen)) == 9


def test_empty_list(app, api_client):
    body = listing(api_client("operator")).get_json()
    assert body == {"sessions": [], "total": 0, "skip": 0, "limit": 50}


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?status=exploded", "status"),
        ("?limit=101", "limit"),
        ("?limit=0", "limit"),
        ("?skip=-1", "skip"),
        ("?created_from=last-tuesday", "created_from"),
        ("?created_from=2026-11-02&created_to=2026-11-01", "created_to"),
        ("?sort=colour", "sort"),
        ("?model_id=abc", "model_id"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(world, query, parameter):
    response = listing(world["alice"], query)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "validation_error"
    assert parameter in body["details"]


def test_owner_filter_is_for_those_who_see_everyone(world):
    response = listing(world["alice"], "?owner=api-operator-1")
    assert response.status_code == 400
    assert "owner" in response.get_json()["details"]


def test_another_users_session_is_404(world):
    bobs = listing(world["bob"]).get_json()["sessions"][0]["session_id"]
    assert world["alice"].get(f"/api/v1/optimization/sessions/{bobs}").status_code == 404


def test_a_session_whose_model_is_gone_is_listed_as_deleted(world):
    from webapp.extensions import db
    from webapp.tables import utcnow

    world["b_model"].deleted_at = utcnow()
    db.session.commit()
    sessions = listing(world["bob"]).get_json()["sessions"]
    assert all(s["model_deleted"] and s["model_name"] == "b-model" for s in sessions)


def test_stats_count_what_the_user_may_see(world):
    alice = world["alice"].get("/api/v1/dashboard/stats").get_json()
    assert alice["total_models"] == 1
    assert alice["total_sessions"] == 9
    assert alice["completed_optimizations"] == 7
    assert alice["failed_optimizations"] == 1
    assert alice["active_optimizations"] == 1
    assert alice["average_size_reduction"] == pytest.approx(30.0)
    assert alice["average_speed_improvement"] == pytest.approx(15.0)
    admin = world["admin"].get("/api/v1/dashboard/stats").get_json()
    assert admin["total_sessions"] == 11
    assert admin["active_optimizations"] == 2


def test_stats_on_an_empty_install_are_zeros(app, api_client):
    body = api_client("viewer").get("/api/v1/dashboard/stats").get_json()
    assert body["total_models"] == body["total_sessions"] == 0
    assert body["average_size_reduction"] == body["average_speed_improvement"] == 0.0
    assert body["last_updated"]


def test_a_listed_row_is_the_sessions_summary(world):
    """Is a row of the list (read as plain columns) what summary() says of that session,
    for a deleted model and an ordinary one alike?"""
    from webapp.api.schemas import SessionSchema
    from webapp.extensions import db
    from webapp.services import session_summaries
    from webapp.tables import OptimizationSession, utcnow

    world["b_model"].deleted_at = utcnow()
    db.session.commit()
    listed = listing(world["admin"], "?limit=100").get_json()["sessions"]
    assert len(listed) == 11
    for row in listed:
        session = db.session.get(OptimizationSession, row["session_id"])
        assert row == session_summaries.jsonable(session_summaries.summary(session))
        assert set(row) == set(SessionSchema().fields)  # what the API docs promise
    assert {r["model_deleted"] for r in listed if r["model_id"] == world["b_model"].id} == {True}


# The executor takes the session at once: a sandboxed worker starts (and fails on the
# generated model's missing file) while the list is read.
@pytest.mark.slow
def test_the_total_follows_a_new_session_at_once(world):
    """The total is cached between changes; does starting a session still count at once?"""
    from webapp.services import optimization

    before = listing(world["alice"]).get_json()["total"]
    optimization.start(world["alice"].user, world["a_model"].id, ["quantization"], {})
    assert listing(world["alice"]).get_json()["total"] == before + 1
    assert listing(world["alice"], "?status=queued").get_json()["total"] == 1
