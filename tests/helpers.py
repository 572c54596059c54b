"""Steps many API tests take: upload a model, start a session, wait for it to end."""

from __future__ import annotations

import io
import time
from pathlib import Path

TERMINAL = {"completed", "failed", "cancelled"}


def upload_file(caller, path: Path, name: str = "model", eval_path: Path | None = None, **fields):
    """POST /api/v1/models with these files; the response, whatever it is."""
    data = {"file": (io.BytesIO(path.read_bytes()), path.name), "name": name, **fields}
    if eval_path is not None:
        data["eval_data"] = (io.BytesIO(eval_path.read_bytes()), "eval.npz")
    return caller.post("/api/v1/models", content_type="multipart/form-data", data=data)


def upload(caller, demo_files, kind="onnx", eval_key="eval"):
    """Upload one of the demo models (with its evaluation data); its model_id."""
    response = upload_file(
        caller, demo_files[kind], f"mlp-{kind}", demo_files[eval_key] if eval_key else None
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["model_id"]


def start(caller, model_id, techniques=("quantization",), parameters=None):
    return caller.post(
        "/api/v1/optimization/sessions",
        json={"model_id": model_id, "techniques": list(techniques), "parameters": parameters or {}},
    )


def wait_for(caller, session_id, statuses=TERMINAL, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = caller.get(f"/api/v1/optimization/sessions/{session_id}").get_json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"session {session_id} still {body['status']} after {seconds}s")
