"""Adding a technique is one module plus one registry entry: a throwaway technique,
registered here and nowhere else, shows on the forms, plans through the API and runs."""

from __future__ import annotations

import shutil

import pytest
from marshmallow import Schema, fields, validate

from tests.helpers import TINY_INPUTS, tiny_onnx_model
from webapp.engine.runner import SessionJob, run_session
from webapp.engine.techniques import TECHNIQUES, Technique, register


class LevelParams(Schema):
    level = fields.Float(
        load_default=0.25,
        validate=validate.Range(min=0.1, max=0.9),
        metadata={"label": "level", "description": "how much of nothing to do"},
    )


def _copy(src, dst, params, data, batch, check) -> dict:
    shutil.copyfile(src, dst)
    return {"level": params["level"]}


@pytest.fixture
def identity():
    technique = register(
        Technique(
            "identity",
            "Identity",
            "copy the model unchanged",
            4,
            LevelParams,
            _copy,
            lambda params: 0.0,
            lossy=False,
        )
    )
    yield technique
    del TECHNIQUES["identity"]


def test_the_start_form_and_the_criteria_page_offer_it(app, identity, admin, api_client, demo_files):
    from tests.helpers import upload

    upload(api_client("operator"), demo_files)
    start_form = admin.client.get("/sessions").get_data(as_text=True)
    assert 'value="identity"' in start_form and "Identity" in start_form
    assert 'name="identity_level"' in start_form
    assert "0.1 to 0.9: how much of nothing to do." in start_form
    criteria_page = admin.client.get("/config").get_data(as_text=True)
    assert criteria_page.count('value="identity"') == 2  # enabled and forbidden


def test_the_api_plans_it_with_its_defaults_and_ranges(app, identity, api_client, demo_files):
    from tests.helpers import start, upload

    operator = api_client("operator")
    model_id = upload(operator, demo_files)
    refused = start(operator, model_id, ["identity"], {"identity": {"level": 2}})
    assert refused.status_code == 400
    assert "parameters.identity.level" in refused.get_json()["details"]
    accepted = start(operator, model_id, ["identity", "quantization"])
    assert accepted.status_code == 202, accepted.get_json()
    plan = accepted.get_json()["plan"]
    assert [step["technique"] for step in plan] == ["quantization", "identity"]
    assert plan[1]["params"] == {"level": 0.25}
    operator.post(f"/api/v1/optimization/sessions/{accepted.get_json()['session_id']}/cancel")


def test_the_engine_runs_it(identity, tmp_path):
    model = tiny_onnx_model(tmp_path / "m.onnx")
    criteria = {
        "threads": 1,
        "latency_batch_size": 4,
        "min_accuracy_retention_percent": 99.0,
        "latency_tolerance_percent": 1000.0,
        "rollback_on_violation": True,
    }
    job = SessionJob(
        1,
        str(model),
        "onnx",
        TINY_INPUTS,
        [{"technique": "identity", "params": {"level": 0.25}}],
        criteria,
        str(tmp_path / "work"),
    )
    outcome = run_session(job, lambda *a: None, lambda *a: None, lambda: False)
    assert outcome.steps[0]["outcome"] == "kept"
    assert outcome.steps[0]["details"] == {"level": 0.25}
