"""Optimization sessions through the API, run by the real executor in worker processes."""

import os
import signal
import time

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import TERMINAL, api_client_for, start, upload, wait_for
from webapp.extensions import db
from webapp.tables import AuditEntry


@pytest.fixture
def operator(api_client):
    return api_client("operator")


def test_int8_dynamic_session_runs_to_a_smaller_faster_model(app, operator, demo_files, tmp_path):
    model_id = upload(operator, demo_files)
    response = start(operator, model_id, parameters={"quantization": {"mode": "int8_dynamic"}})
    assert response.status_code == 202
    queued = response.get_json()
    # A free worker may claim it before the answer is written: either state is honest.
    assert queued["status"] in {"queued", "running"}
    assert queued["plan"] == [{"technique": "quantization", "params": {"mode": "int8_dynamic"}}]
    assert queued["criteria"]["min_accuracy_retention_percent"] == 99.0

    done = wait_for(operator, queued["session_id"])
    assert done["status"] == "completed", done
    results = done["results"]
    assert results["accuracy_kind"] == "accuracy"
    assert results["optimized_size_bytes"] < results["original_size_bytes"] * 0.4
    assert results["size_reduction_percent"] == pytest.approx(
        100 * (1 - results["optimized_size_bytes"] / results["original_size_bytes"]), abs=0.01
    )
    assert results["accuracy_retention_percent"] >= 99.0
    assert done["progress_percentage"] == 100.0
    assert done["size_reduction_percent"] == results["size_reduction_percent"]

    kinds = [
        e["kind"]
        for e in operator.get(f"/api/v1/optimization/sessions/{queued['session_id']}/events").get_json()[
            "events"
        ]
    ]
    assert kinds[:3] == ["queued", "started", "baseline"]
    assert kinds[-1] == "completed"
    assert "step_completed" in kinds or "step_rolled_back" in kinds
    progress = [
        e["progress"]
        for e in operator.get(f"/api/v1/optimization/sessions/{queued['session_id']}/events").get_json()[
            "events"
        ]
    ]
    assert progress == sorted(progress)

    artifact = operator.get(f"/api/v1/optimization/sessions/{queued['session_id']}/artifact")
    assert artifact.status_code == 200
    assert "attachment" in artifact.headers["Content-Disposition"]
    path = tmp_path / "optimized.onnx"
    path.write_bytes(artifact.data)
    artifact.close()
    assert len(artifact.data) == results["optimized_size_bytes"]
    # It loads in the standard runtime and still classifies digits.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with np.load(demo_files["eval"]) as data:
        logits = session.run(None, {session.get_inputs()[0].name: data["x"]})[0]
        accuracy = float((logits.argmax(1) == data["y"]).mean())
    assert accuracy == pytest.approx(results["accuracy_after"], abs=1e-6)


@pytest.mark.parametrize("kind", ["torchscript", "exported_program"])
def test_pytorch_formats_are_exported_then_optimized(app, operator, demo_files, kind):
    model_id = upload(operator, demo_files, kind)
    session_id = start(operator, model_id, ["pruning", "quantization"]).get_json()["session_id"]
    done = wait_for(operator, session_id)
    assert done["status"] == "completed", done
    events = operator.get(f"/api/v1/optimization/sessions/{session_id}/events").get_json()["events"]
    steps = [e["step"] for e in events if e["kind"] == "step_started"]
    assert steps == ["export_onnx", "pruning", "quantization"]
    pruning = next(s for s in done["results"]["steps"] if s["technique"] == "pruning")
    assert pruning["details"]["sparsity_reached"] == pytest.approx(0.5, abs=0.01)


def test_without_labels_the_report_says_agreement(app, operator, demo_files):
    model_id = upload(operator, demo_files, eval_key="eval_unlabelled")
    done = wait_for(operator, start(operator, model_id).get_json()["session_id"])
    assert done["results"]["accuracy_kind"] == "top1_agreement"
    assert done["results"]["evaluation_inputs"] == "dataset"


def test_a_step_that_breaks_the_criteria_is_rolled_back(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    # Keeping 1 % of the weights destroys the model: the step must not survive.
    session_id = start(operator, model_id, ["compression"], {"compression": {"rank": 1}}).get_json()[
        "session_id"
    ]
    done = wait_for(operator, session_id)
    assert done["status"] == "completed"
    step = done["results"]["steps"][0]
    assert step["outcome"] == "rolled_back"
    assert "accuracy retention" in step["reason"]
    assert done["results"]["size_reduction_percent"] == 0
    events = operator.get(f"/api/v1/optimization/sessions/{session_id}/events").get_json()["events"]
    assert any(e["kind"] == "step_rolled_back" for e in events)


def test_cancel_stops_a_running_session_within_seconds(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    session_id = start(operator, model_id, ["compression", "pruning", "quantization"]).get_json()[
        "session_id"
    ]
    wait_for(operator, session_id, {"running"})
    asked = time.monotonic()
    response = operator.post(f"/api/v1/optimization/sessions/{session_id}/cancel")
    assert response.status_code == 202
    done = wait_for(operator, session_id, seconds=30)
    assert done["status"] == "cancelled"
    assert time.monotonic() - asked < 15
    again = operator.post(f"/api/v1/optimization/sessions/{session_id}/cancel")
    assert again.status_code == 409


def test_cancel_of_a_finished_session_is_409(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    session_id = start(operator, model_id).get_json()["session_id"]
    wait_for(operator, session_id)
    response = operator.post(f"/api/v1/optimization/sessions/{session_id}/cancel")
    assert response.status_code == 409
    assert "already completed" in response.get_json()["message"]


def test_a_killed_worker_fails_the_session_as_worker_lost(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    session_id = start(operator, model_id, ["compression", "pruning", "quantization"]).get_json()[
        "session_id"
    ]
    wait_for(operator, session_id, {"running"})
    executor = app.extensions["optideck.executor"]
    deadline = time.monotonic() + 10
    while executor.worker_pid(session_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(executor.worker_pid(session_id), signal.SIGKILL)
    done = wait_for(operator, session_id, seconds=30)
    assert done["status"] == "failed"
    assert done["error_type"] == "worker_lost"


def test_sessions_queue_when_every_worker_is_busy(make_app, demo_files):
    app = make_app(executor={"max_workers": 1, "poll_seconds": 0.1})
    with app.app_context():
        caller = api_client_for(app, "queue-operator")
        model_id = upload(caller, demo_files)
        ids = [start(caller, model_id).get_json()["session_id"] for _ in range(3)]
        seen_running = set()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            states = [caller.get(f"/api/v1/optimization/sessions/{i}").get_json()["status"] for i in ids]
            assert states.count("running") <= 1
            seen_running |= {i for i, s in zip(ids, states, strict=True) if s == "running"}
            if all(s in TERMINAL for s in states):
                break
            time.sleep(0.1)
        assert states == ["completed"] * 3


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"techniques": ["distillation"]}, 400, "techniques"),
        (
            {"techniques": ["pruning"], "parameters": {"pruning": {"sparsity": 2}}},
            400,
            "parameters.pruning.sparsity",
        ),
        (
            {"techniques": ["compression"], "parameters": {"compression": {"rank": 4, "energy": 0.9}}},
            400,
            "parameters.compression.rank",
        ),
        (
            {"techniques": ["quantization"], "parameters": {"quantization": {"mode": "int4"}}},
            400,
            "parameters.quantization.mode",
        ),
        ({"techniques": ["quantization"], "parameters": {"pruning": {}}}, 400, "parameters"),
    ],
)
def test_invalid_plans_are_refused_with_the_field(app, operator, demo_files, body, status, field):
    model_id = upload(operator, demo_files)
    response = operator.post("/api/v1/optimization/sessions", json={"model_id": model_id, **body})
    assert response.status_code == status
    assert field in response.get_json()["details"]


def test_int8_static_needs_evaluation_data(app, operator, demo_files):
    model_id = upload(operator, demo_files, eval_key=None)
    response = start(operator, model_id, parameters={"quantization": {"mode": "int8_static"}})
    assert response.status_code == 422
    assert "evaluation data" in response.get_json()["message"]


def test_starting_on_a_deleted_model_is_refused(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    assert operator.delete(f"/api/v1/models/{model_id}").status_code == 204
    response = start(operator, model_id)
    assert response.status_code == 409
    assert response.get_json()["error"] == "model_deleted"


def test_a_model_in_use_cannot_be_deleted(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    session_id = start(operator, model_id, ["compression", "pruning", "quantization"]).get_json()[
        "session_id"
    ]
    response = operator.delete(f"/api/v1/models/{model_id}")
    assert response.status_code == 409
    wait_for(operator, session_id)
    assert operator.delete(f"/api/v1/models/{model_id}").status_code == 204


def test_users_act_only_on_their_own_sessions(app, api_client, demo_files):
    alice, bob = api_client("operator"), api_client("operator")
    viewer, admin = api_client("viewer"), api_client("admin")
    model_id = upload(alice, demo_files)
    session_id = start(alice, model_id).get_json()["session_id"]
    path = f"/api/v1/optimization/sessions/{session_id}"
    assert bob.get(path).status_code == 404
    assert bob.post(path + "/cancel").status_code == 404
    assert bob.get(path + "/events").status_code == 404
    assert viewer.get(path).status_code == 200
    assert viewer.post(path + "/cancel").status_code == 403
    assert admin.get(path).status_code == 200
    wait_for(alice, session_id)
    assert bob.get(path + "/artifact").status_code == 404
    assert db.session.query(AuditEntry).filter_by(allowed=False, username=viewer.user.username).count() == 1


def test_artifact_of_an_unfinished_session_is_404(app, operator, demo_files):
    model_id = upload(operator, demo_files)
    session_id = start(operator, model_id, ["compression", "pruning", "quantization"]).get_json()[
        "session_id"
    ]
    response = operator.get(f"/api/v1/optimization/sessions/{session_id}/artifact")
    assert response.status_code == 404
    wait_for(operator, session_id)
