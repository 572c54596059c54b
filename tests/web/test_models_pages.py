"""The Models pages: upload with inline errors, analysis, delete."""

import io

import pytest

from tests.factories import gen_model
from tests.helpers import AuthActions, csrf_from, make_user, tiny_onnx_model
from webapp.extensions import db
from webapp.tables import AuditEntry, ModelMetadata


def post_upload(role_client, content, filename="digits.onnx", **fields):
    token = csrf_from(role_client.client, "/models")
    data = {"csrf_token": token, "file": (io.BytesIO(content), filename), **fields}
    return role_client.client.post("/models", data=data, content_type="multipart/form-data")


def test_operator_uploads_and_sees_the_analysis(operator, demo_files):
    response = post_upload(
        operator,
        demo_files["onnx"].read_bytes(),
        name="digits",
        eval_data=(io.BytesIO(demo_files["eval"].read_bytes()), "eval.npz"),
    )
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
    response = operator.client.post(
        "/models", data={"csrf_token": token, "name": "x"}, content_type="multipart/form-data"
    )
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
    location = post_upload(operator, demo_files["onnx"].read_bytes()).headers["Location"]
    other = app.test_client()
    make_user("mallory", "operator")
    AuthActions(other).login("mallory")
    assert other.get(location).status_code == 404


def test_search_answers_htmx_with_the_table(operator):
    gen_model(operator.user, "resnet-small")
    gen_model(operator.user, "bert_tiny")
    partial = operator.client.get("/models?q=RESNET", headers={"HX-Request": "true"})
    text = partial.get_data(as_text=True)
    assert text.lstrip().startswith('<div id="model-table">')
    assert "resnet-small" in text and "bert_tiny" not in text
    # Wildcards are literal: "t_s" would match "resnet-small" as a LIKE pattern.
    assert "No model matches" in operator.client.get("/models?q=t_s").get_data(as_text=True)
    assert "bert_tiny" in operator.client.get("/models?q=t_t").get_data(as_text=True)


def test_upload_through_htmx_redirects_with_a_header(operator, demo_files):
    token = csrf_from(operator.client, "/models")
    response = operator.client.post(
        "/models",
        headers={"HX-Request": "true"},
        content_type="multipart/form-data",
        data={"csrf_token": token, "file": (io.BytesIO(demo_files["onnx"].read_bytes()), "m.onnx")},
    )
    assert response.status_code == 204
    assert response.headers["HX-Redirect"].startswith("/models/")


@pytest.mark.slow  # the file is refused by a sandboxed worker
def test_a_refused_htmx_upload_refreshes_only_the_error_boxes(operator):
    """The form is not replaced, so the files the user chose and the typed name stay."""
    token = csrf_from(operator.client, "/models")
    response = operator.client.post(
        "/models",
        headers={"HX-Request": "true"},
        content_type="multipart/form-data",
        data={
            "csrf_token": token,
            "file": (io.BytesIO(b"not a model at all"), "m.onnx"),
            "name": "kept-name",
        },
    )
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    assert "<form" not in text and "<input" not in text
    assert '<div id="err-file" hx-swap-oob="true"><div class="error" id="file-error"' in text
    assert '<div id="err-name" hx-swap-oob="true"></div>' in text  # an earlier error is cleared


def test_an_upload_over_the_limit_explains_itself_on_the_page(make_app):
    app = make_app(uploads={"max_bytes": 2048})
    client = app.test_client()
    with app.app_context():
        make_user("big-uploader", "operator")
        AuthActions(client).login("big-uploader")
        token = csrf_from(client, "/models")
        response = client.post(
            "/models",
            headers={"HX-Request": "true"},
            content_type="multipart/form-data",
            data={"csrf_token": token, "file": (io.BytesIO(b"x" * 10_000), "m.onnx")},
        )
        assert response.status_code == 413
        assert "larger than this server accepts" in response.get_data(as_text=True)


def test_the_upload_form_offers_the_task_metrics_and_the_page_names_the_chosen_one(operator, tmp_path):
    form = operator.client.get("/models").get_data(as_text=True)
    assert '<select id="task" name="task">' in form
    assert '<option value="auto" selected>Automatic</option>' in form
    assert "F1 at IoU 0.5" in form  # each metric's description beside the choice
    response = post_upload(operator, tiny_onnx_model(tmp_path / "m.onnx").read_bytes(), task="ctc")
    assert response.status_code == 302
    page = operator.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Text recognition (CTC): Greedy CTC decoding" in page


def test_an_unknown_task_metric_is_an_inline_error(operator, tmp_path):
    response = post_upload(
        operator, tiny_onnx_model(tmp_path / "m.onnx").read_bytes(), name="kept", task="segmentation"
    )
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert 'id="task-error"' in text and "Must be one of" in text
    assert 'value="kept"' in text
    assert db.session.query(ModelMetadata).count() == 0


def test_optimize_this_model_opens_the_start_form_with_it_chosen(operator, viewer):
    mine, other = gen_model(operator.user, "mine"), gen_model(operator.user, "other")
    listing = operator.client.get("/models").get_data(as_text=True)
    link = f"/sessions?model_id={mine.id}#start"
    assert link in listing
    assert link in operator.client.get(f"/models/{mine.id}").get_data(as_text=True)
    form = operator.client.get(f"/sessions?model_id={mine.id}").get_data(as_text=True)
    assert f'<option value="{mine.id}" selected>' in form
    assert f'<option value="{other.id}" >' in form
    # Viewers may look but not start: no action for them.
    assert "Optimize" not in viewer.client.get("/models").get_data(as_text=True)
    assert "Optimize this model" not in viewer.client.get(f"/models/{mine.id}").get_data(as_text=True)


def test_what_cannot_be_undone_asks_first(operator, admin):
    model = gen_model(operator.user, "mine")
    page = operator.client.get(f"/models/{model.id}").get_data(as_text=True)
    assert 'data-confirm="Delete mine v1? This cannot be undone."' in page
    users = admin.client.get("/admin/users").get_data(as_text=True)
    assert f'data-confirm="Deactivate {operator.user.username}? Their browser sessions' in users


def test_a_number_input_reads_as_one(operator):
    """A sample rate or a gain (a TorchScript int or float argument) has no dimensions."""
    model = gen_model(
        operator.user,
        "vad",
        format="torchscript",
        input_spec=[
            {"name": "audio", "shape": [None, 512], "dtype": "float32"},
            {"name": "sr", "shape": [], "dtype": "int64"},
        ],
    )
    text = operator.client.get(f"/models/{model.id}").get_data(as_text=True)
    assert "[batch, 512]" in text and "a number, fed whole" in text
