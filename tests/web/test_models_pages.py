"""The Models pages: upload with inline errors, analysis, delete."""

import io

from tests.conftest import csrf_from
from webapp.extensions import db
from webapp.models import AuditEntry, ModelMetadata


def post_upload(role_client, content, filename="digits.onnx", **fields):
    token = csrf_from(role_client.client, "/models")
    data = {"csrf_token": token, "file": (io.BytesIO(content), filename), **fields}
    return role_client.client.post("/models", data=data, content_type="multipart/form-data")


def test_operator_uploads_and_sees_the_analysis(operator, demo_files):
    response = post_upload(operator, demo_files["onnx"].read_bytes(), name="digits",
                           eval_data=(io.BytesIO(demo_files["eval"].read_bytes()), "eval.npz"))
    assert response.status_code == 302
    page = operator.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "digits" in page and "analysed as onnx" in page
    assert "Gemm" in page and "450 samples, with labels" in page
    listing = operator.client.get("/models").get_data(as_text=True)
    assert "digits" in listing


def test_a_bad_upload_shows_the_reason_beside_the_field(operator):
    response = post_upload(operator, b"\x80\x04K\x01.", filename="model.pt")
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    assert 'id="file-error"' in text and "pickle" in text
    assert db.session.query(ModelMetadata).count() == 0


def test_upload_without_a_file_is_an_inline_error(operator):
    token = csrf_from(operator.client, "/models")
    response = operator.client.post("/models", data={"csrf_token": token, "name": "x"},
                                    content_type="multipart/form-data")
    assert response.status_code == 400
    assert "Choose a model file." in response.get_data(as_text=True)


def test_viewers_see_no_upload_form_and_cannot_post(viewer, demo_files):
    assert "Upload a model" not in viewer.client.get("/models").get_data(as_text=True)
    response = post_upload(viewer, demo_files["onnx"].read_bytes())
    assert response.status_code == 403
    assert db.session.query(AuditEntry).filter_by(allowed=False).count() == 1


def test_delete_from_the_page(operator, demo_files):
    location = post_upload(operator, demo_files["onnx"].read_bytes()).headers["Location"]
    model_id = int(location.rsplit("/", 1)[1])
    response = operator.auth.post(f"/models/{model_id}/delete", {}, page=location)
    assert response.headers["Location"] == "/models"
    assert operator.client.get(location).status_code == 404


def test_other_operators_get_404_on_the_page(app, operator, demo_files):
    from tests.conftest import AuthActions, make_user

    location = post_upload(operator, demo_files["onnx"].read_bytes()).headers["Location"]
    other = app.test_client()
    make_user("mallory", "operator")
    AuthActions(other).login("mallory")
    assert other.get(location).status_code == 404
