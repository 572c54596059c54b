"""The executor stays fair: a stalling model frees its worker with a clear reason, and one
user cannot hold every worker."""

from __future__ import annotations

import time

import numpy as np

from tests import hostile
from tests.helpers import TERMINAL, api_client_for, start, upload, upload_file, wait_for


def test_a_model_that_stalls_in_onnx_runtime_fails_as_stalled(make_app, demo_files, tmp_path):
    """Does a model that never returns from one inference hold its worker until the
    session's 30-minute limit? It must fail within the inference watchdog, named as
    stalled, while another user's session runs to the end."""
    app = make_app(executor={"inference_timeout_seconds": 3.0, "max_workers": 2})
    with app.app_context():
        attacker, other = api_client_for(app, "staller"), api_client_for(app, "bystander")
        model = hostile.onnx_stalls_on_batches(tmp_path / "stall.onnx")
        data = hostile.npz(tmp_path / "eval.npz", x=np.ones((64, 4), dtype=np.float32))
        response = upload_file(attacker, model, "stall", data)
        assert response.status_code == 201, response.get_json()
        stalled = start(attacker, response.get_json()["model_id"]).get_json()["session_id"]
        honest = start(other, upload(other, demo_files)).get_json()["session_id"]
        began = time.monotonic()
        done = wait_for(attacker, stalled, seconds=60)
        assert done["status"] == "failed", done
        assert done["error_type"] == "stalled"
        assert "inference_timeout_seconds" in done["error_message"]
        assert time.monotonic() - began < 40
        assert wait_for(other, honest)["status"] == "completed"


def test_one_user_cannot_hold_every_worker(make_app, demo_files):
    """With two workers and one session per user, a user's second session waits while
    another user's session takes the free worker."""
    app = make_app(executor={"max_workers": 2, "max_running_per_user": 1})
    with app.app_context():
        busy, other = api_client_for(app, "busy-user"), api_client_for(app, "other-user")
        mine = upload(busy, demo_files)
        theirs = upload(other, demo_files)
        own = [
            start(busy, mine, ["compression", "pruning", "quantization"]).get_json()["session_id"]
            for _ in range(3)
        ]
        foreign = start(other, theirs).get_json()["session_id"]
        saw_foreign_running = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            states = [busy.get(f"/api/v1/optimization/sessions/{i}").get_json()["status"] for i in own]
            assert states.count("running") <= 1, states
            foreign_state = other.get(f"/api/v1/optimization/sessions/{foreign}").get_json()
            saw_foreign_running |= foreign_state["status"] in ("running", *TERMINAL)
            if all(s in TERMINAL for s in states):
                break
            time.sleep(0.1)
        assert states == ["completed"] * 3
        assert saw_foreign_running
        assert wait_for(other, foreign)["status"] == "completed"
