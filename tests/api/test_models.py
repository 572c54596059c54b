"""POST/GET/DELETE /api/v1/models: uploads analysed in a worker, stored by content."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from tests.helpers import api_client_for, tiny_onnx_model
from webapp.extensions import db
from webapp.tables import ModelMetadata


def stored_files(app):
    root = app.extensions["optideck.blobs"].root
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def post_model(operator, content, filename="model.onnx", **extra):
    """POST a model file (and form fields) as multipart, the way scripts do."""
    data = {"file": (io.BytesIO(content), filename), **extra}
    return operator.post("/api/v1/models", content_type="multipart/form-data", data=data)


@pytest.mark.parametrize("kind", ["onnx", "torchscript", "exported_program"])
def test_each_format_is_detected_from_content_and_analysed(app, api_client, demo_files, kind):
    operator = api_client("operator")
    # The name says nothing: the format comes from the bytes.
    response = post_model(
        operator,
        demo_files[kind].read_bytes(),
        filename="upload.bin",
        name="digits-mlp",
        eval_data=(io.BytesIO(demo_files["eval"].read_bytes()), "eval.npz"),
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["format"] == kind
    assert body["parameter_count"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert body["input_spec"] == [
        {"name": body["input_spec"][0]["name"], "shape": [None, 64], "dtype": "float32"}
    ]
    assert body["analysis"]["baseline_latency_ms"] > 0
    assert body["analysis"]["op_histogram"]
    assert body["eval_data"] == {"samples": 450, "labels": True}
    assert operator.get(f"/api/v1/models/{body['model_id']}").get_json()["sha256"] == body["sha256"]


def test_same_bytes_are_stored_once_and_the_same_model_is_not_a_new_version(app, api_client, demo_files):
    operator = api_client("operator")
    content = demo_files["onnx"].read_bytes()
    first = post_model(operator, content, name="same").get_json()
    again = post_model(operator, content, name="same")
    assert again.status_code == 409
    assert "same model as same v1" in again.get_json()["message"]
    assert again.get_json()["details"]["model_id"] == [str(first["model_id"])]
    other_name = post_model(operator, content, name="other").get_json()
    assert first["sha256"] == other_name["sha256"] and other_name["version"] == 1
    assert stored_files(app).count(first["sha256"]) == 1
    # Other evaluation data or another task metric under the same name is a new version.
    detection = post_model(operator, content, name="same", task="agreement").get_json()
    assert detection["version"] == 2


@pytest.mark.parametrize(
    ("content", "status", "words"),
    [
        # Opened (and refused) by a sandboxed worker.
        pytest.param(
            np.random.default_rng(0).bytes(4096),
            422,
            "not a valid ONNX model",
            id="random-bytes",
            marks=pytest.mark.slow,
        ),
        pytest.param(b"", 400, "empty", id="empty"),
    ],
)
def test_bad_files_are_refused_and_leave_nothing(app, api_client, content, status, words):
    operator = api_client("operator")
    response = post_model(operator, content)
    assert response.status_code == status
    body = response.get_json()
    assert words in body["message"]
    assert "file" in body["details"]
    assert db.session.query(ModelMetadata).count() == 0
    assert stored_files(app) == []


def test_truncated_onnx_is_refused(app, api_client, demo_files):
    content = demo_files["onnx"].read_bytes()
    response = post_model(api_client("operator"), content[: len(content) // 2])
    assert response.status_code == 422
    assert db.session.query(ModelMetadata).count() == 0
    assert stored_files(app) == []


class _CreatesAFile:
    """Unpickling this would create a file: the proof that a loader ran it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("wrap", ["raw", "torch_zip"])
def test_pickles_are_refused_without_being_unpickled(app, api_client, tmp_path, wrap):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_CreatesAFile(str(marker)), protocol=4)
    if wrap == "torch_zip":  # what torch.save writes: a zip around data.pkl
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("checkpoint/data.pkl", payload)
            archive.writestr("checkpoint/version", "3\n")
        payload = buffer.getvalue()
    response = post_model(api_client("operator"), payload, filename="model.pt")
    assert response.status_code == 422
    assert "pickle" in response.get_json()["message"]
    assert "torch.export" in response.get_json()["message"]
    assert not marker.exists()
    assert stored_files(app) == []


def test_upload_over_the_limit_is_413_and_leaves_nothing(make_app):
    app = make_app(uploads={"max_bytes": 1024})
    with app.app_context():
        response = post_model(api_client_for(app, "big"), b"x" * 4096)
        assert response.status_code == 413
        assert response.get_json()["error"] == "too_large"
        assert stored_files(app) == []


def test_eval_data_that_does_not_fit_is_refused(app, api_client, demo_files, tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((10, 32), dtype=np.float32), y=np.zeros(10, dtype=np.int64))
    response = post_model(
        api_client("operator"),
        demo_files["onnx"].read_bytes(),
        eval_data=(io.BytesIO(wrong.read_bytes()), "wrong.npz"),
    )
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "dataset_rejected"
    assert "dimension 1 is 32, not 64" in body["message"]
    assert "eval_data" in body["details"]
    assert stored_files(app) == []


def test_torchscript_needs_an_input_shape_without_eval_data(app, api_client, demo_files):
    operator = api_client("operator")
    content = demo_files["torchscript"].read_bytes()
    missing = post_model(operator, content, filename="m.pt")
    assert missing.status_code == 422
    assert "input_shape" in missing.get_json()["message"]
    given = post_model(operator, content, filename="m.pt", input_shape=json.dumps([1, 64]))
    assert given.status_code == 201
    bad = post_model(operator, content, filename="m.pt", input_shape="[1, 64")
    assert bad.status_code == 400
    assert "input_shape" in bad.get_json()["details"]


def test_viewers_cannot_upload(app, api_client, demo_files):
    response = post_model(api_client("viewer"), demo_files["onnx"].read_bytes())
    assert response.status_code == 403


def test_missing_file_field_is_400(app, api_client):
    response = api_client("operator").post(
        "/api/v1/models", content_type="multipart/form-data", data={"name": "nothing"}
    )
    assert response.status_code == 400
    assert "file" in response.get_json()["details"]


def test_operators_see_only_their_models_and_admins_all(app, api_client, demo_files):
    alice, bob, admin = api_client("operator"), api_client("operator"), api_client("admin")
    created = post_model(alice, demo_files["onnx"].read_bytes()).get_json()
    assert bob.get("/api/v1/models").get_json()["total"] == 0
    assert bob.get(f"/api/v1/models/{created['model_id']}").status_code == 404
    assert bob.delete(f"/api/v1/models/{created['model_id']}").status_code == 404
    assert admin.get("/api/v1/models").get_json()["total"] == 1


def test_delete_removes_the_file_when_no_model_uses_it(app, api_client, demo_files):
    operator = api_client("operator")
    created = post_model(operator, demo_files["onnx"].read_bytes()).get_json()
    assert operator.delete(f"/api/v1/models/{created['model_id']}").status_code == 204
    assert operator.get(f"/api/v1/models/{created['model_id']}").status_code == 404
    assert created["sha256"] not in stored_files(app)


def test_the_task_metric_is_chosen_at_upload_and_read_back(app, api_client, tmp_path):
    """Can a script choose the metric that gates a model's sessions, and read it back?"""
    operator = api_client("operator")
    content = tiny_onnx_model(tmp_path / "m.onnx").read_bytes()
    chosen = post_model(operator, content, name="detector", task="detection")
    assert chosen.status_code == 201, chosen.get_json()
    model_id = chosen.get_json()["model_id"]
    assert chosen.get_json()["task"] == "detection"
    assert operator.get(f"/api/v1/models/{model_id}").get_json()["task"] == "detection"
    assert db.session.get(ModelMetadata, model_id).task == "detection"
    assert post_model(operator, content, name="plain").get_json()["task"] == "auto"


def test_an_unknown_task_metric_is_a_400_that_stores_nothing(app, api_client, tmp_path):
    content = tiny_onnx_model(tmp_path / "m.onnx").read_bytes()
    response = post_model(api_client("operator"), content, task="segmentation")
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "validation_error"
    assert "task" in body["details"]
    assert {"message", "timestamp", "request_id"} <= body.keys()
    assert db.session.query(ModelMetadata).count() == 0
    assert stored_files(app) == []


def test_a_model_of_several_inputs_is_uploaded_with_one_array_per_input_and_optimized(
    app, api_client, tmp_path
):
    from tests.helpers import multi_input_npz, multi_input_onnx_model, upload_file, wait_for

    caller = api_client()
    model = multi_input_onnx_model(tmp_path / "multi.onnx")
    response = upload_file(caller, model, "multi", multi_input_npz(tmp_path / "multi.npz"))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert [spec["name"] for spec in body["input_spec"]] == ["a", "b", "state", "scale"]
    bad = upload_file(caller, model, "multi", multi_input_npz(tmp_path / "bad.npz", b=None))
    assert bad.status_code == 422
    assert "missing: 'b'" in bad.get_json()["message"]
    started = caller.post(
        "/api/v1/optimization/sessions",
        json={"model_id": body["model_id"], "techniques": ["quantization"]},
    )
    assert started.status_code == 202, started.get_json()
    session = wait_for(caller, started.get_json()["session_id"])
    assert session["status"] == "completed", session
    assert session["results"]["evaluation_inputs"] == "dataset"
