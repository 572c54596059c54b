"""Can a script use a client that openapi-python-client generates from the served document?

The document is fetched from a real server (`flask serve`: gunicorn, a worker pool), the
client generated from it with no warning, and a whole flow run through it: a token, an
upload, a session started and waited for, the list, the optimized model downloaded. The
JSON the server sent is also held against the document's own schemas, so a field the
services write but the document does not describe shows here.
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
import time
import urllib.request

import onnx
import pytest
from openapi_schema_validator import OAS30Validator

from tests.helpers import tiny_onnx_model
from webapp.testing import Server

PASSWORD = "generated-client-admin-password"
PACKAGE = "optideck_client"


@pytest.fixture
def server(app, test_database_url, tmp_path):
    """`flask serve` (gunicorn and its worker pool) on this test's database."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = Server(
        folder,
        {
            "OPTIDECK_DATABASE_URL": test_database_url,
            "OPTIDECK_ADMIN_PASSWORD": PASSWORD,
            # As the other tests time models: briefly.
            "OPTIDECK_EXECUTOR_LATENCY_SECONDS": "0.2",
            "OPTIDECK_EXECUTOR_POLL_SECONDS": "0.1",
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture
def generated(server, tmp_path):
    """The client package generated from the served document, imported; and the document."""
    with urllib.request.urlopen(f"{server.url}/api/v1/openapi.json", timeout=10) as response:  # noqa: S310
        document = json.load(response)
    spec_path = tmp_path / "openapi.json"
    spec_path.write_text(json.dumps(document))
    config = tmp_path / "client.yaml"
    config.write_text(f"package_name_override: {PACKAGE}\nproject_name_override: optideck-client\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(spec_path),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "client" / PACKAGE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    printed = run.stdout + run.stderr
    print(printed)  # with -s: what the generator said
    assert run.returncode == 0, printed
    assert "warning" not in printed.lower() and "error" not in printed.lower(), printed
    sys.path.insert(0, str(tmp_path / "client"))
    try:
        yield importlib.import_module(PACKAGE), document
    finally:
        sys.path.remove(str(tmp_path / "client"))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def conforms(document: dict, component: str, data) -> None:
    """`data` is valid under the document's schema `component` (refs resolved in it)."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in OAS30Validator(schema).iter_errors(data)]
    assert not errors, errors


def test_a_generated_client_runs_the_whole_flow(server, generated, tmp_path):
    client_package, document = generated
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    create_token = importlib.import_module(f"{PACKAGE}.api.tokens.create_token")

    with client_package.Client(base_url=server.url, raise_on_unexpected_status=True) as anonymous:
        token = create_token.sync(client=anonymous, body=models.Login(username="admin", password=PASSWORD))
    assert isinstance(token, models.Token) and token.token_type == "bearer"
    with client_package.AuthenticatedClient(
        base_url=server.url, token=token.access_token, raise_on_unexpected_status=True
    ) as client:
        flow(client, models, types, document, tmp_path)


def flow(client, models, types, document, tmp_path) -> None:
    """Upload, start, wait, list, download: what a script does."""
    api = f"{PACKAGE}.api"
    upload_model = importlib.import_module(f"{api}.models.upload_model")
    start_session = importlib.import_module(f"{api}.sessions.start_session")
    get_session = importlib.import_module(f"{api}.sessions.get_session")
    list_sessions = importlib.import_module(f"{api}.sessions.list_sessions")
    download = importlib.import_module(f"{api}.sessions.download_session_artifact")

    model_file = tiny_onnx_model(tmp_path / "tiny.onnx")
    model = upload_model.sync(
        client=client,
        body=models.ModelUploadRequest(
            file=types.File(payload=io.BytesIO(model_file.read_bytes()), file_name="tiny.onnx"),
            name="tiny",
        ),
    )
    assert isinstance(model, models.Model), model
    assert model.format_ == models.ModelFormat.ONNX and model.analysis.op_histogram["MatMul"] == 1

    started = start_session.sync(
        client=client,
        body=models.SessionStart(
            model_id=model.model_id, techniques=[models.SessionStartTechniquesItem.QUANTIZATION]
        ),
    )
    assert isinstance(started, models.SessionDetail), started
    deadline = time.monotonic() + 45
    while True:
        response = get_session.sync_detailed(started.session_id, client=client)
        session = response.parsed
        if session.status in ("completed", "failed", "cancelled"):  # the enums are str
            break
        assert time.monotonic() < deadline, f"still {session.status}"
        time.sleep(0.2)
    assert session.status == models.SessionDetailStatus.COMPLETED, session.error_message
    assert session.results.criteria_met in (True, False)
    assert session.plan[0].technique == models.PlanStepTechnique.QUANTIZATION
    conforms(document, "SessionDetail", json.loads(response.content))

    listed = list_sessions.sync_detailed(client=client, status=[models.ListSessionsStatusItem.COMPLETED])
    assert [s.session_id for s in listed.parsed.sessions] == [session.session_id]
    conforms(document, "SessionList", json.loads(listed.content))

    artifact = download.sync(session.session_id, client=client)
    assert isinstance(artifact, types.File)
    optimized = onnx.load_from_string(artifact.payload.read())
    assert optimized.graph.node
