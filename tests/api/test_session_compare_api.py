"""GET /api/v1/optimization/sessions/compare: the compare page's table as JSON, from the same
function, for the same sessions and no others."""

import re

import pytest
from openapi_schema_validator import OAS30Validator

from tests.factories import gen_compared, gen_model, gen_session
from tests.helpers import ApiClient, make_user
from webapp.services import optimization, tokens
from webapp.web import filters

COMPARE = "/api/v1/optimization/sessions/compare"
ERROR_FIELDS = {"error", "message", "details", "timestamp", "request_id"}


def by_label(body: dict) -> dict:
    """{row label: (differs, [(value, best)])} of an API answer."""
    return {
        row["label"]: (row["differs"], [(c["value"], c["best"]) for c in row["cells"]])
        for row in body["rows"]
    }


def conforms(client, body: dict) -> None:
    """`body` is valid under the served document's SessionComparison."""
    document = client.get("/api/v1/openapi.json").get_json()
    schema = {"$ref": "#/components/schemas/SessionComparison", "components": document["components"]}
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in OAS30Validator(schema).iter_errors(body)]
    assert not errors, errors


def api_for(app, user) -> ApiClient:
    return ApiClient(app.test_client(), user, tokens.create_personal(user, "tests", 30, False).access_token)


def test_two_sessions_side_by_side_with_differences_and_best_marked(app, api_client):
    """Does the API mark what differs and each row's best figure, as the page does?"""
    caller = api_client("operator")
    model = gen_model(caller.user, "m")
    a = gen_compared(model, caller.user, 70.0, 50.0, 99.0)
    b = gen_compared(model, caller.user, 40.0, 150.0, 99.8)
    response = caller.get(COMPARE, query_string={"ids": f"{a.id},{b.id}"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) == {"sessions", "rows", "floor"}  # no plot coordinates
    assert [s["session_id"] for s in body["sessions"]] == [a.id, b.id]
    assert body["sessions"][0]["model_name"] == "m" and body["sessions"][0]["applied"] == "int8 dynamic"
    assert body["floor"] == optimization.current_criteria()["min_accuracy_retention_percent"]
    rows = by_label(body)
    assert rows["Model"] == (False, [("m v1", False), ("m v1", False)])
    assert rows["What was applied"] == (False, [("int8 dynamic", False)] * 2)
    assert rows["Size reduction"] == (True, [(70.0, True), (40.0, False)])
    assert rows["Optimized size"] == (True, [(300, True), (600, False)])
    assert rows["Speed-up"] == (True, [(1.5, False), (2.5, True)])
    assert rows["Accuracy retained"] == (True, [(99.0, False), (99.8, True)])
    assert rows["Original size"] == (False, [(1000, False), (1000, False)])
    assert rows["Optimized latency"] == (False, [(None, False), (None, False)])
    assert rows["Criteria met"] == (False, [("yes", False), ("yes", False)])
    kinds = {row["label"]: row["kind"] for row in body["rows"]}
    assert kinds["Optimized size"] == "bytes" and kinds["Speed-up"] == "x" and kinds["Model"] == "text"


# The page's table: row label, whether it differs, and per cell its text and best mark.
ROW = re.compile(
    r'<tr( class="differs")?>\s*<th scope="row">([^<]+)(?:<span[^>]*>[^<]*</span>)?</th>(.*?)</tr>', re.S
)
CELL = re.compile(r"<td([^>]*)>(.*?)</td>", re.S)


def page_table(text: str) -> dict:
    return {
        label.strip(): (
            bool(differs),
            [
                (
                    " ".join(re.sub(r"<[^>]+>", " ", body).split()).removesuffix(" best"),
                    'class="best"' in attrs,
                )
                for attrs, body in CELL.findall(cells)
            ],
        )
        for differs, label, cells in ROW.findall(text)
    }


def shown(kind: str, cell: dict) -> str:
    """How the page writes a cell's value (templates/sessions/compare.html, `cell`)."""
    value, low, high = cell["value"], cell["low"], cell["high"]
    if value is None:
        return "—"
    written = {
        "bytes": lambda: filters.filesize(value),
        "pct": lambda: filters.pct(value, 2),
        "ms": lambda: f"{filters.ms(value)} {filters.between(low, high)}",
        "x": lambda: f"{filters.speedup(value)} {filters.between(low, high, 2, 'x')}",
    }
    return " ".join(written[kind]().split()) if kind in written else str(value)


def test_the_page_and_the_api_show_the_same_figures_and_best_marks(app, operator):
    """Do the page and the API agree, value for value and mark for mark?"""
    model, other = gen_model(operator.user, "m"), gen_model(operator.user, "other", version=2)
    timed = {
        "original_latency_ms": 2.0,
        "original_latency_low_ms": 1.9,
        "original_latency_high_ms": 2.1,
        "accuracy_before": 0.9,
        "accuracy_kind": "top1_accuracy",
        "criteria_met": False,
    }
    sessions = [
        gen_compared(model, operator.user, 70.0, 50.0, 99.0),
        gen_compared(
            model,
            operator.user,
            40.0,
            150.0,
            99.8,
            optimized_latency_ms=0.8,
            optimized_latency_low_ms=0.75,
            optimized_latency_high_ms=0.85,
            speedup_low=2.4,
            speedup_high=2.6,
            accuracy_after=0.898,
            **timed,
        ),
        gen_compared(other, operator.user, 55.0, 80.0, 99.8, optimized_latency_ms=1.1, **timed),
    ]
    ids = ",".join(str(s.id) for s in sessions)
    page = operator.client.get(f"/sessions/compare?ids={ids}")
    answer = api_for(app, operator.user).get(COMPARE, query_string={"ids": ids})
    assert page.status_code == answer.status_code == 200
    on_page = page_table(page.get_data(as_text=True))
    conforms(operator.client, answer.get_json())
    rows = answer.get_json()["rows"]
    assert list(on_page) == [row["label"] for row in rows]
    for row in rows:
        expected = (row["differs"], [(shown(row["kind"], c), c["best"]) for c in row["cells"]])
        assert on_page[row["label"]] == expected, row["label"]
    # Ties are all marked, on both.
    assert [c["best"] for c in next(r for r in rows if r["label"] == "Accuracy retained")["cells"]] == [
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("form", ["commas", "repeated", "both", "spaced"])
def test_ids_with_commas_or_repeated_are_read_alike(api_client, form):
    """Is ids=3,5 the same request as ids=3&ids=5, as on the page?"""
    caller = api_client("operator")
    model = gen_model(caller.user, "m")
    a, b, c = (gen_compared(model, caller.user, 10.0 * n, 10.0, 99.5) for n in (1, 2, 3))
    given = {
        "commas": f"{a.id},{b.id},{c.id}",
        "repeated": [str(a.id), str(b.id), str(c.id)],
        "both": [f"{a.id},{b.id}", str(c.id), str(a.id)],
        "spaced": f" {a.id} , {b.id},,{c.id},",
    }[form]
    response = caller.get(COMPARE, query_string={"ids": given})
    assert response.status_code == 200, response.get_json()
    assert [s["session_id"] for s in response.get_json()["sessions"]] == [a.id, b.id, c.id]


def test_a_model_alone_compares_its_latest_completed_sessions(api_client):
    """Does model_id alone pick that model's latest completed sessions, as the page does?"""
    caller = api_client("operator")
    model, other = gen_model(caller.user, "m"), gen_model(caller.user, "other")
    mine = [gen_compared(model, caller.user, 10.0 * n, 10.0, 99.5) for n in range(1, 4)]
    gen_compared(other, caller.user, 5.0, 5.0, 99.5)
    gen_session(model, caller.user, "running")
    response = caller.get(COMPARE, query_string={"model_id": model.id})
    assert response.status_code == 200, response.get_json()
    assert {s["session_id"] for s in response.get_json()["sessions"]} == {s.id for s in mine}
    # Given ids win over model_id.
    picked = caller.get(COMPARE, query_string={"model_id": model.id, "ids": f"{mine[0].id},{mine[1].id}"})
    assert [s["session_id"] for s in picked.get_json()["sessions"]] == [mine[0].id, mine[1].id]


@pytest.mark.parametrize(
    "query",
    ["one", "seven", "word", "same twice", "zero", "too big", "empty", "nothing", "a model with one"],
)
def test_anything_but_two_to_six_session_ids_is_a_400_naming_ids(api_client, query):
    """Is a bad pick refused with the error body, its details naming ids?"""
    caller = api_client("operator")
    model = gen_model(caller.user, "m")
    a = gen_compared(model, caller.user, 10.0, 10.0, 99.5)
    args = {
        "one": {"ids": str(a.id)},
        "seven": {"ids": ",".join(str(n) for n in range(1, 8))},
        "word": {"ids": f"{a.id},abc"},
        "same twice": {"ids": [str(a.id), str(a.id)]},
        "zero": {"ids": f"0,{a.id}"},
        "too big": {"ids": f"{a.id},{2**31}"},
        "empty": {"ids": ""},
        "nothing": {},
        "a model with one": {"model_id": model.id},
    }[query]
    response = caller.get(COMPARE, query_string=args, headers={"X-Request-ID": "compare-400"})
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert set(body) == ERROR_FIELDS
    assert body["error"] == "validation_error" and body["request_id"] == "compare-400"
    assert "ids" in body["details"], body


def test_another_operators_session_is_a_404_like_a_missing_one(api_client):
    """Can an operator learn anything of another operator's session by comparing it?"""
    caller = api_client("operator")
    stranger = make_user("stranger", "operator")
    theirs = gen_compared(gen_model(stranger, "theirs-secret"), stranger, 10.0, 10.0, 99.5)
    mine = gen_compared(gen_model(caller.user, "m"), caller.user, 20.0, 10.0, 99.5)
    missing = theirs.id + 1000
    hidden = caller.get(COMPARE, query_string={"ids": f"{mine.id},{theirs.id}"})
    absent = caller.get(COMPARE, query_string={"ids": f"{mine.id},{missing}"})
    assert hidden.status_code == absent.status_code == 404
    assert "theirs-secret" not in hidden.get_data(as_text=True)
    shown_hidden, shown_absent = hidden.get_json(), absent.get_json()
    assert set(shown_hidden) == ERROR_FIELDS
    assert shown_hidden["message"] == f"No session {theirs.id}." and shown_absent["message"] == (
        f"No session {missing}."
    )
    assert (shown_hidden["error"], shown_hidden["details"]) == (
        shown_absent["error"],
        shown_absent["details"],
    )


def test_a_viewer_compares_what_they_may_see(api_client):
    """May a viewer, who sees every session, compare any of them (and change none)?"""
    owner = make_user("owner", "operator")
    model = gen_model(owner, "m")
    a = gen_compared(model, owner, 70.0, 50.0, 99.0)
    b = gen_compared(model, owner, 40.0, 150.0, 99.8)
    response = api_client("viewer").get(COMPARE, query_string={"ids": [str(a.id), str(b.id)]})
    assert response.status_code == 200, response.get_json()
    assert by_label(response.get_json())["Size reduction"] == (True, [(70.0, True), (40.0, False)])


def test_without_a_token_it_is_a_401(client):
    response = client.get(COMPARE, query_string={"ids": "1,2"})
    assert response.status_code == 401
    body = response.get_json()
    assert set(body) == ERROR_FIELDS and body["error"] == "token_missing"
