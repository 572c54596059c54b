"""The Sessions pages: filtering with htmx, starting, following and cancelling."""

import io
import time

import pytest

from tests.factories import gen_model, gen_session
from tests.helpers import AuthActions, csrf_from, make_user
from webapp.extensions import db
from webapp.tables import OptimizationSession


def test_filters_answer_htmx_with_the_list_and_links_with_the_page(operator):
    model = gen_model(operator.user, "m")
    gen_session(model, operator.user, "completed")
    gen_session(model, operator.user, "failed")
    full = operator.client.get("/sessions?status=failed")
    assert full.status_code == 200
    text = full.get_data(as_text=True)
    assert "<html" in text and "1–1 of 1" in text and 'value="failed" checked' in text
    partial = operator.client.get("/sessions?status=failed", headers={"HX-Request": "true"})
    body = partial.get_data(as_text=True)
    assert body.lstrip().startswith('<div id="session-list">')
    assert "badge failed" in body and "badge completed" not in body
    assert "HX-Request" in partial.headers["Vary"]


def test_invalid_filters_show_an_inline_message_naming_them(operator):
    response = operator.client.get("/sessions?limit=500&created_from=soon")
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "The filters could not be applied" in text
    assert "<strong>limit</strong>" in text and "<strong>created_from</strong>" in text


def test_a_bad_status_filter_reads_as_a_sentence(operator):
    text = operator.client.get("/sessions?status=bogus&status=soon").get_data(as_text=True)
    assert "<strong>status</strong>: Must be one of: queued, running, completed, failed, cancelled." in text
    assert '{"0"' not in text and "[&#39;" not in text


def test_pagination_links_keep_the_filters(operator):
    model = gen_model(operator.user, "m")
    for _ in range(3):
        gen_session(model, operator.user, "completed")
    text = operator.client.get("/sessions?status=completed&limit=2").get_data(as_text=True)
    assert "status=completed&amp;skip=2&amp;limit=2" in text


def test_empty_states(operator):
    assert "No sessions yet" in operator.client.get("/sessions").get_data(as_text=True)
    text = operator.client.get("/sessions?status=failed").get_data(as_text=True)
    assert "No session matches these filters" in text


def test_a_row_whose_model_was_deleted_says_so(operator):
    from webapp.tables import utcnow

    model = gen_model(operator.user, "gone")
    gen_session(model, operator.user, "completed")
    model.deleted_at = utcnow()
    db.session.commit()
    assert "gone (deleted)" in operator.client.get("/sessions").get_data(as_text=True)


def _upload(role_client, demo_files):
    token = csrf_from(role_client.client, "/models")
    response = role_client.client.post(
        "/models",
        content_type="multipart/form-data",
        data={
            "csrf_token": token,
            "file": (io.BytesIO(demo_files["onnx"].read_bytes()), "m.onnx"),
            "eval_data": (io.BytesIO(demo_files["eval"].read_bytes()), "e.npz"),
        },
    )
    return int(response.headers["Location"].rsplit("/", 1)[1])


def _wait(session_id, statuses=("completed", "failed", "cancelled"), seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        db.session.expire_all()
        session = db.session.get(OptimizationSession, session_id)
        if session.status in statuses:
            return session
        time.sleep(0.2)
    raise AssertionError(f"session {session_id} is still {session.status}")


def test_start_follow_and_download_from_the_pages(operator, demo_files):
    model_id = _upload(operator, demo_files)
    response = operator.auth.post(
        "/sessions",
        {
            "model_id": str(model_id),
            "techniques": ["pruning", "quantization"],
            "pruning_sparsity": "0.4",
            "quantization_mode": "int8_dynamic",
        },
        page="/sessions",
    )
    assert response.status_code == 302
    location = response.headers["Location"]
    session_id = int(location.rsplit("/", 1)[1])
    session = _wait(session_id)
    assert session.plan[0] == {"technique": "pruning", "params": {"sparsity": 0.4}}
    page = operator.client.get(location).get_data(as_text=True)
    assert "Before and after" in page and "% retained" in page
    assert "Compressed (deflate)" in page  # pruning was in the plan
    download = operator.client.get(f"/sessions/{session_id}/artifact")
    assert download.status_code == 200
    assert len(download.data) == session.results["optimized_size_bytes"]
    download.close()


def test_bad_start_values_show_beside_their_fields(operator, demo_files):
    model_id = _upload(operator, demo_files)
    response = operator.auth.post(
        "/sessions",
        {"model_id": str(model_id), "techniques": ["pruning"], "pruning_sparsity": "2"},
        page="/sessions",
    )
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert 'id="pruning_sparsity-error"' in text
    assert db.session.query(OptimizationSession).count() == 0


def test_cancel_from_the_page(operator):
    session = gen_session(gen_model(operator.user, "m"), operator.user, "queued")
    response = operator.auth.post(f"/sessions/{session.id}/cancel", {}, page=f"/sessions/{session.id}")
    assert response.status_code == 302
    db.session.refresh(session)
    assert session.status == "cancelled"
    page = operator.client.get(f"/sessions/{session.id}").get_data(as_text=True)
    assert "Cancel session" not in page


def test_viewers_see_but_cannot_start_or_cancel(viewer, operator):
    model = gen_model(operator.user, "m")
    session = gen_session(model, operator.user, "queued")
    assert viewer.client.get(f"/sessions/{session.id}").status_code == 200
    assert "Start a session" not in viewer.client.get("/sessions").get_data(as_text=True)
    response = viewer.auth.post(f"/sessions/{session.id}/cancel", {}, page="/sessions")
    assert response.status_code == 403


def test_another_operators_session_page_is_404(app, operator):
    model = gen_model(operator.user, "m")
    session = gen_session(model, operator.user, "completed")
    other = app.test_client()
    make_user("eve", "operator")
    AuthActions(other).login("eve")
    assert other.get(f"/sessions/{session.id}").status_code == 404
    assert other.get(f"/sessions/{session.id}/artifact").status_code == 404


def test_find_the_best_starts_a_search_and_its_budget_is_checked_inline(operator):
    model = gen_model(operator.user, "m")
    for budget, message in [("soon", "not a number"), ("0.1", "At least 0.5"), ("1000", "At most 30")]:
        response = operator.auth.post(
            "/sessions",
            {"model_id": str(model.id), "search": "1", "budget_minutes": budget, "techniques": ["pruning"]},
            page="/sessions",
        )
        assert response.status_code == 400, budget
        text = response.get_data(as_text=True)
        assert 'id="budget_minutes-error"' in text and message in text
        assert 'name="search" value="1" checked' in text  # the user's choice stays
    assert db.session.query(OptimizationSession).count() == 0
    response = operator.auth.post(
        "/sessions",
        {"model_id": str(model.id), "search": "1", "budget_minutes": "2", "techniques": ["pruning"]},
        page="/sessions",
    )
    assert response.status_code == 302
    session = db.session.query(OptimizationSession).one()
    # The ticked techniques give way to the search, which explores what the criteria allow.
    assert session.techniques == ["auto"]
    assert session.plan == [{"technique": "auto", "params": {"budget_minutes": 2.0}}]


def test_run_again_fills_the_start_form_with_the_plan(operator):
    model = gen_model(operator.user, "m")
    session = gen_session(
        model,
        operator.user,
        "cancelled",
        techniques=["pruning", "quantization"],
        parameters={"pruning": {"sparsity": 0.3}, "quantization": {"mode": "fp16"}},
    )
    page = operator.client.get(f"/sessions/{session.id}").get_data(as_text=True)
    assert f"/sessions?rerun={session.id}#start" in page
    form = operator.client.get(f"/sessions?rerun={session.id}").get_data(as_text=True)
    assert f'<option value="{model.id}" selected>' in form
    assert 'value="pruning" checked' in form and 'value="compression" checked' not in form
    assert 'value="0.3"' in form and '<option value="fp16" selected' in form
    search = gen_session(
        model, operator.user, "failed", techniques=["auto"], parameters={"auto": {"budget_minutes": 4}}
    )
    again = operator.client.get(f"/sessions?rerun={search.id}").get_data(as_text=True)
    assert 'name="search" value="1" checked' in again and 'value="4"' in again
    assert operator.client.get("/sessions?rerun=soon").status_code == 400


def test_the_list_searches_model_names_and_links_keep_the_words(operator, api_client):
    for name in ("digits-cnn", "digits-mlp", "speech_100%"):
        gen_session(gen_model(operator.user, name), operator.user, "completed")
    gen_session(gen_model(operator.user, "other-cnn"), operator.user, "completed")
    text = operator.client.get("/sessions?q=CNN&limit=1").get_data(as_text=True)
    assert "1–1 of 2" in text and "q=CNN&amp;skip=1&amp;limit=1" in text
    assert "of 1" in operator.client.get("/sessions?q=100%25").get_data(as_text=True)  # % is a letter
    caller = api_client()
    assert caller.get("/api/v1/optimization/sessions?q=cnn").get_json()["total"] == 0  # not theirs
    assert operator.client.get("/sessions?q=" + "x" * 201).status_code == 400


def test_the_filtered_list_downloads_as_csv_on_the_page_and_the_api(operator, api_client):
    import csv
    import io

    hostile = gen_model(operator.user, "=HYPERLINK(1)")
    for status in ("completed", "failed", "completed"):
        gen_session(hostile, operator.user, status)
    gen_session(gen_model(operator.user, "plain"), operator.user, "completed")
    listing = operator.client.get("/sessions?status=completed&limit=1").get_data(as_text=True)
    assert "/sessions/export.csv?status=completed" in listing and "Download these 3 as CSV" in listing
    page = operator.client.get("/sessions/export.csv?status=completed&q=HYPER")
    assert page.mimetype == "text/csv" and "attachment" in page.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(page.get_data(as_text=True))))
    assert len(rows) == 2 and {row["status"] for row in rows} == {"completed"}
    assert rows[0]["model_name"] == "'=HYPERLINK(1)"  # a spreadsheet reads it as text
    assert rows[0]["size_reduction_percent"] == "50.0"
    # The API gives the same file for the same filters, to the same user only.
    caller = api_client()
    assert caller.get("/api/v1/optimization/sessions/export.csv").get_data(as_text=True).count("\n") == 1
    assert operator.client.get("/sessions/export.csv?status=bogus").status_code == 400


def test_the_start_form_disables_what_the_chosen_model_cannot_take_and_says_why(operator):
    bare = gen_model(operator.user, "bare")
    with_data = gen_model(operator.user, "with-data", eval_data_sha256="e" * 64)
    page = operator.client.get(f"/sessions?model_id={bare.id}").get_data(as_text=True)
    assert '<option value="int8_static" disabled>' in page
    assert "bare v1 has none" in page
    assert "Nothing ticked: the techniques the criteria enable run" in page
    # Choosing another model re-renders the techniques (htmx), keeping what was ticked.
    partial = operator.client.get(
        f"/sessions/start-options?model_id={with_data.id}&techniques=pruning&pruning_sparsity=0.3",
        headers={"HX-Request": "true"},
    ).get_data(as_text=True)
    assert partial.lstrip().startswith('<fieldset class="field" id="start-techniques">')
    assert "disabled" not in partial and "int8_static" in partial
    assert 'value="pruning" checked' in partial and 'value="quantization" checked' not in partial
    assert 'value="0.3"' in partial


def test_viewers_cannot_ask_for_start_options(viewer):
    assert viewer.client.get("/sessions/start-options").status_code == 403


def test_a_completed_session_with_an_incomplete_report_still_shows_what_it_has(operator):
    """Results stored without the full report (by hand, or by an older version) must not
    break the page: it says what is missing and shows the figures it has."""
    model = gen_model(operator.user, "m")
    session = gen_session(model, operator.user, "completed", size=40.0, speed=25.0)
    response = operator.client.get(f"/sessions/{session.id}")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert 'id="report-incomplete"' in text
    assert "it lacks original_size_bytes" in text
    assert "40.0 % smaller" in text and "1.25x speed" in text and "99.50 % accuracy retained" in text


def test_a_detection_report_says_what_its_figure_rests_on(operator):
    """The worker's word passes the same check as any worker's, and the page names the
    detections and the confidence the F1 was judged at."""
    from webapp.services import artifacts

    given = {name: 1.0 for name in artifacts.NUMBERS} | {
        "criteria_met": True,
        "accuracy_kind": "detection_f1",
        "reference_detections": 48,
        "detection_confidence": 0.0431,
    }
    model = gen_model(operator.user, "detector")
    session = gen_session(model, operator.user, "completed")
    session.results = artifacts.results({"results": given, "steps": []}, 1000, 900)
    session.criteria = {"min_accuracy_retention_percent": 99.0, "threads": 1}
    db.session.commit()
    text = operator.client.get(f"/sessions/{session.id}").get_data(as_text=True)
    assert "rests on the original's 48 detections at confidence 0.0431 or more" in text
    assert "fewer than one box per image at 0.25" in text
    assert session.results["reference_detections"] == 48
    with pytest.raises(artifacts.Refused):
        artifacts.results({"results": given | {"reference_detections": "many"}, "steps": []}, 1000, 900)
