"""Shared stored files outlive one owner's delete; the criteria's forbidden techniques are
refused and the session names the criteria version that allowed its plan."""

from __future__ import annotations

import io

from tests.helpers import start, upload, upload_file, wait_for

CRITERIA = "/api/v1/config/optimization-criteria"


def _stored(app, sha256: str) -> bool:
    return app.extensions["optideck.blobs"].path_for(sha256).is_file()


def test_identical_bytes_of_two_users_survive_one_delete(app, api_client, demo_files):
    """Alice and Bob upload the same bytes; Alice deletes hers. Bob's model keeps its file
    and can still be optimized."""
    alice, bob = api_client("operator"), api_client("operator")
    mine = upload(alice, demo_files)
    theirs = upload(bob, demo_files)
    sha = bob.get(f"/api/v1/models/{theirs}").get_json()["sha256"]
    eval_sha = app.extensions["optideck.blobs"].digest(demo_files["eval"])[0]
    assert alice.delete(f"/api/v1/models/{mine}").status_code == 204
    assert _stored(app, sha) and _stored(app, eval_sha)
    session = start(bob, theirs).get_json()["session_id"]
    assert wait_for(bob, session)["status"] == "completed"
    assert bob.delete(f"/api/v1/models/{theirs}").status_code == 204
    assert not _stored(app, sha) and not _stored(app, eval_sha)


def test_an_artifact_outlives_a_model_made_of_the_same_bytes(app, api_client, demo_files):
    """A session's optimized model, uploaded again as a model and deleted, still downloads."""
    owner, copier = api_client("operator"), api_client("operator")
    session = start(owner, upload(owner, demo_files)).get_json()["session_id"]
    assert wait_for(owner, session)["status"] == "completed"
    url = f"/api/v1/optimization/sessions/{session}/artifact"
    download = owner.get(url)
    artifact = download.get_data()
    download.close()
    response = copier.post(
        "/api/v1/models",
        content_type="multipart/form-data",
        data={
            "file": (io.BytesIO(artifact), "copy.onnx"),
            "name": "copy",
            "eval_data": (io.BytesIO(demo_files["eval"].read_bytes()), "eval.npz"),
        },
    )
    assert response.status_code == 201, response.get_json()
    assert copier.delete(f"/api/v1/models/{response.get_json()['model_id']}").status_code == 204
    again = owner.get(url)
    assert again.status_code == 200
    assert again.get_data() == artifact
    again.close()


def _forbid(admin, techniques: list[str]) -> int:
    body = admin.get(CRITERIA).get_json()
    enabled = [t for t in body["enabled_techniques"] if t not in techniques] or ["quantization"]
    saved = admin.put(
        CRITERIA, json={**body, "forbidden_techniques": techniques, "enabled_techniques": enabled}
    )
    assert saved.status_code == 200, saved.get_json()
    return saved.get_json()["version"]


def test_forbidden_techniques_are_refused_by_name(app, api_client, demo_files):
    admin, operator = api_client("admin"), api_client("operator")
    model = upload(operator, demo_files)
    version = _forbid(admin, ["pruning"])
    refused = start(operator, model, ["pruning", "quantization"])
    assert refused.status_code == 422
    body = refused.get_json()
    assert "pruning" in body["message"] and f"version {version}" in body["message"]
    assert body["details"]["techniques"]
    allowed = start(operator, model, ["quantization"])
    assert allowed.status_code == 202
    assert allowed.get_json()["criteria_version"] == version
    assert allowed.get_json()["criteria"]["forbidden_techniques"] == ["pruning"]


def test_the_start_form_leaves_forbidden_techniques_out(app, api_client, admin, demo_files):
    _forbid(api_client("admin"), ["compression"])
    assert upload_file(api_client("operator"), demo_files["onnx"], "m").status_code == 201
    page = admin.client.get("/sessions").get_data(as_text=True)
    assert 'value="compression"' not in page
    assert 'value="pruning"' in page
    assert "forbidden by the optimization criteria" in page
