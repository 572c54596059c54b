"""The model store in an S3-compatible bucket (storage.backend = "s3"), against moto's S3
server running in this test's process: real HTTP, boto3 end to end, no network."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.request

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.helpers import api_client_for, tiny_onnx_model
from webapp.config import ConfigError
from webapp.services import stored_files
from webapp.services.errors import ServiceError
from webapp.services.storage import S3BlobStore, for_config
from webapp.testing import free_port

BUCKET = "optideck-test"


@pytest.fixture
def s3(monkeypatch):
    """The endpoint of a fresh S3 server with an empty bucket; boto3's credentials from the
    environment, as a deployment would give them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets per process, across servers: start from none.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))  # noqa: S310
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def keys(endpoint: str) -> list[str]:
    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def spooled(store: S3BlobStore, content: bytes):
    return store.spool(io.BytesIO(content), limit=1 << 20)


def test_a_file_stored_on_one_host_is_read_on_another(s3, tmp_path):
    """Is an adopted file in the bucket, under its hash, and read by a host whose cache
    never saw it? A hash the bucket lacks is a FileNotFoundError, not a library error."""
    web = S3BlobStore(str(tmp_path / "web"), BUCKET, "od/", endpoint_url=s3)
    path, sha, _ = spooled(web, b"model bytes")
    web.adopt(path, sha)
    assert keys(s3) == [f"od/objects/{sha}"]

    worker = S3BlobStore(str(tmp_path / "worker"), BUCKET, "od/", endpoint_url=s3)
    assert not worker.path_for(sha).exists()
    copy = worker.local_copy(sha)
    assert copy.read_bytes() == b"model bytes"
    assert copy == worker.path_for(sha)
    assert list((tmp_path / "worker" / "tmp").iterdir()) == []  # no download left behind
    with pytest.raises(FileNotFoundError):
        worker.local_copy(hashlib.sha256(b"never stored").hexdigest())


def test_nothing_leaves_the_bucket_before_the_commit(s3, tmp_path):
    """Setting a file aside (the delete's transaction is still open) keeps the bucket's
    copy, so a rollback loses nothing even if the bucket then fails; forget() after the
    commit removes it."""
    store = S3BlobStore(str(tmp_path / "web"), BUCKET, endpoint_url=s3)
    path, sha, _ = spooled(store, b"artifact bytes")
    store.adopt(path, sha)

    aside = store.set_aside(sha)
    assert keys(s3) == [f"objects/{sha}"]
    store.put_back(aside)  # the transaction failed
    assert store.local_copy(sha).read_bytes() == b"artifact bytes"

    store.discard(store.set_aside(sha))  # it committed
    store.forget(sha)
    assert keys(s3) == []
    assert not store.path_for(sha).exists()


def test_a_download_that_does_not_match_its_hash_is_refused(s3, tmp_path):
    store = S3BlobStore(str(tmp_path / "web"), BUCKET, endpoint_url=s3)
    sha = hashlib.sha256(b"the real bytes").hexdigest()
    boto3.client("s3", endpoint_url=s3).put_object(Bucket=BUCKET, Key=store.key_for(sha), Body=b"other bytes")
    with pytest.raises(ServiceError) as refused:
        store.local_copy(sha)
    assert refused.value.status == 503
    assert not store.path_for(sha).exists()
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backend": "s3", "s3_bucket": ""}, "needs storage.s3_bucket"),
        ({"backend": "nfs"}, 'storage.backend must be "local" or "s3"'),
    ],
)
def test_a_bad_storage_backend_is_a_configuration_error(tmp_path, settings, message):
    config = {"storage": {"dir": str(tmp_path), "s3_prefix": "", "s3_endpoint_url": "", "s3_region": ""}}
    config["storage"].update(settings)
    with pytest.raises(ConfigError, match=message):
        for_config(config)


@pytest.mark.slow
def test_models_sessions_and_deletes_go_through_the_bucket(s3, make_app, tmp_path, demo_files):
    """Through the API, on an app whose store is the bucket: is an upload stored there,
    does a session run from it and store its artifact there, can another host (an empty
    cache) download that artifact, and does deleting the model take its file away?"""
    app = make_app(storage={"backend": "s3", "s3_bucket": BUCKET, "s3_endpoint_url": s3})
    with app.app_context():
        ready = app.test_client().get("/readyz").get_json()
        assert ready["checks"]["storage"] == {"ok": True, "detail": "bucket reachable"}
        operator = api_client_for(app, "s3-operator")
        content = demo_files["onnx"].read_bytes()  # int8 shrinks it: the artifact is a file of its own
        model = operator.post(
            "/api/v1/models",
            content_type="multipart/form-data",
            data={"file": (io.BytesIO(content), "m.onnx"), "name": "bucketed"},
        ).get_json()
        assert keys(s3) == [f"optideck/objects/{model['sha256']}"]

        started = operator.post(
            "/api/v1/optimization/sessions",
            json={"model_id": model["model_id"], "techniques": ["quantization"]},
        ).get_json()
        deadline = time.monotonic() + 120
        while (session := operator.get(f"/api/v1/optimization/sessions/{started['session_id']}").get_json())[
            "status"
        ] not in ("completed", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert session["status"] == "completed", session
        artifact = operator.get(f"/api/v1/optimization/sessions/{started['session_id']}/artifact")
        assert artifact.status_code == 200
        artifact_sha = hashlib.sha256(artifact.data).hexdigest()
        artifact.close()
        assert artifact_sha != model["sha256"]
        assert f"optideck/objects/{artifact_sha}" in keys(s3)

    other_host = make_app(
        storage={"backend": "s3", "s3_bucket": BUCKET, "s3_endpoint_url": s3, "dir": str(tmp_path / "other")}
    )
    with other_host.app_context():
        again = other_host.test_client().get(
            f"/api/v1/optimization/sessions/{started['session_id']}/artifact",
            headers={"Authorization": f"Bearer {operator.token}"},
        )
        assert again.status_code == 200 and again.data == artifact.data
        again.close()
        other_host.extensions["optideck.executor"].shutdown()

    with app.app_context():
        # The session's artifact keeps its own file; the model's goes with the model.
        assert operator.delete(f"/api/v1/models/{model['model_id']}").status_code == 204
        assert keys(s3) == [f"optideck/objects/{artifact_sha}"]

        # The same bytes uploaded again: a clean-up of the earlier delete arriving late (it
        # runs after its commit) finds them referenced again and leaves them.
        again = operator.post(
            "/api/v1/models",
            content_type="multipart/form-data",
            data={"file": (io.BytesIO(content), "m.onnx"), "name": "bucketed-again"},
        )
        assert again.status_code == 201, again.get_json()
        stored_files._forget_unused(model["sha256"])
        assert f"optideck/objects/{model['sha256']}" in keys(s3)
        app.extensions["optideck.executor"].shutdown()


def test_an_unreachable_bucket_is_a_503_that_changes_nothing(make_app, tmp_path, monkeypatch):
    """With the bucket down, is an upload refused with the JSON error body (nothing stored,
    no file left in the spool), and does /readyz say the store is not reachable?"""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    closed = f"http://127.0.0.1:{free_port()}"
    app = make_app(storage={"backend": "s3", "s3_bucket": BUCKET, "s3_endpoint_url": closed})
    with app.app_context():
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["checks"]["storage"] == {
            "ok": False,
            "detail": "the model store's bucket is not reachable",
        }
        operator = api_client_for(app, "s3-down")
        content = tiny_onnx_model(tmp_path / "m.onnx").read_bytes()
        response = operator.post(
            "/api/v1/models",
            content_type="multipart/form-data",
            data={"file": (io.BytesIO(content), "m.onnx"), "name": "nowhere"},
        )
        assert response.status_code == 503, response.get_json()
        body = response.get_json()
        assert body["error"] == "storage_unavailable"
        assert "nothing was changed" in body["message"]
        assert operator.get("/api/v1/models").get_json()["total"] == 0
        assert list(app.extensions["optideck.blobs"].tmp_dir.iterdir()) == []
        app.extensions["optideck.executor"].shutdown()
