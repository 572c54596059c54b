"""A search through the API: the front in the results, any kept candidate downloadable,
the files kept while the session refers to them."""

from __future__ import annotations

import hashlib

import pytest

from tests.helpers import upload, wait_for


@pytest.fixture
def operator(api_client):
    return api_client("operator")


def _search(caller, model_id, **body):
    return caller.post(
        "/api/v1/optimization/sessions", json={"model_id": model_id, "techniques": ["auto"], **body}
    )


def test_a_search_returns_the_front_and_every_kept_candidate_downloads(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    response = _search(operator, model_id, budget_minutes=5)
    assert response.status_code == 202, response.get_json()
    session = wait_for(operator, response.get_json()["session_id"], seconds=300)
    assert session["status"] == "completed", session
    assert session["techniques"] == ["auto"]
    results = session["results"]
    candidates = results["candidates"]
    chosen = results["chosen"]
    assert candidates[chosen]["kept"] and len(candidates) > 3
    base = f"/api/v1/optimization/sessions/{session['session_id']}/artifact"
    default = operator.get(base)
    assert default.status_code == 200
    chosen_bytes = default.data
    default.close()  # a file response holds the stored file open until closed
    for candidate in candidates:
        got = operator.get(f"{base}?candidate={candidate['index']}")
        if not candidate["kept"]:
            assert got.status_code == 404
            assert got.get_json()["error"] == "not_found"
            continue
        assert got.status_code == 200
        data = got.data
        got.close()
        # Sizes come from the stored files, not from the worker's word.
        assert len(data) == candidate["size_bytes"]
        assert f"candidate{candidate['index']}" in got.headers["Content-Disposition"]
        if candidate["index"] == chosen:
            assert hashlib.sha256(data).digest() == hashlib.sha256(chosen_bytes).digest()
    assert operator.get(f"{base}?candidate=x").status_code == 400
    assert operator.get(f"{base}?candidate=-1").status_code == 400
    # Deleting the model leaves the session's candidates downloadable.
    assert operator.delete(f"/api/v1/models/{model_id}").status_code in (200, 204)
    kept = next(c for c in candidates if c["kept"])
    after = operator.get(f"{base}?candidate={kept['index']}")
    assert after.status_code == 200
    after.close()


def test_a_search_request_is_checked_before_it_queues(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    for body, field in [
        ({"techniques": ["auto", "pruning"]}, "techniques"),
        ({"parameters": {"pruning": {"sparsity": 0.5}}}, "parameters"),
        ({"budget_minutes": 0.1}, "budget_minutes"),
        ({"budget_minutes": 1000}, "budget_minutes"),
    ]:
        response = operator.post(
            "/api/v1/optimization/sessions",
            json={"model_id": model_id, "techniques": ["auto"], **body},
        )
        assert response.status_code == 400, (body, response.get_json())
        assert field in str(response.get_json()["details"])
    ignored = operator.post(
        "/api/v1/optimization/sessions",
        json={"model_id": model_id, "techniques": ["pruning"], "budget_minutes": 5},
    )
    assert ignored.status_code == 400
    assert "budget_minutes" in ignored.get_json()["details"]
