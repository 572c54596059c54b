"""No page answers 5xx to what a browser (or someone typing URLs) can send."""

import io

import pytest

from tests.factories import gen_artifact, gen_model, gen_session
from tests.helpers import PASSWORD, csrf_from, make_user
from webapp.extensions import db
from webapp.services import criteria
from webapp.tables import ModelMetadata

HUGE = 2**64


@pytest.mark.parametrize(
    "path", ["/models/{n}", "/sessions/{n}", "/sessions/{n}/artifact", "/config/versions/{n}"]
)
@pytest.mark.parametrize("number", [HUGE, 2**31])
def test_huge_ids_in_page_paths_are_404_pages(admin, path, number):
    response = admin.client.get(path.format(n=number))
    assert response.status_code == 404
    assert "There is nothing at this address." in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "path",
    [
        "/models/{n}/delete",
        "/sessions/{n}/cancel",
        "/admin/users/{n}/role",
        "/admin/users/{n}/active",
        "/account/tokens/{n}/revoke",
        "/config/versions/{n}/revert",
    ],
)
def test_huge_ids_in_page_forms_are_404(admin, path):
    token = csrf_from(admin.client, "/dashboard")
    response = admin.client.post(path.format(n=HUGE), data={"csrf_token": token})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        f"skip={HUGE}",
        "skip=" + "9" * 5000,
        f"model_id={HUGE}",
        "created_to=9999-12-31",
        "created_from=9999-12-31",
        "created_from=0001-01-01T00:00:00%2B05:00",
    ],
)
def test_out_of_range_list_filters_show_an_inline_message(operator, query):
    response = operator.client.get(f"/sessions?{query}")
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "The filters could not be applied" in text
    assert f"<strong>{query.split('=')[0]}</strong>" in text


@pytest.mark.parametrize("model_id", [str(HUGE), "²", "9" * 5000, "-1", "0x10"])
def test_starting_a_session_with_an_impossible_model_is_an_inline_error(operator, model_id):
    gen_model(operator.user, "m")
    token = csrf_from(operator.client, "/sessions")
    response = operator.client.post(
        "/sessions",
        data={
            "csrf_token": token,
            "model_id": model_id,
            "techniques": ["quantization"],
            "quantization_mode": "int8_dynamic",
        },
    )
    assert response.status_code == 400
    assert "Choose a model." in response.get_data(as_text=True)


@pytest.mark.parametrize("version", [str(HUGE), "²", "9" * 5000])
def test_saving_criteria_based_on_an_impossible_version_is_4xx(admin, version):
    document = criteria.current().document
    data = {key: ("on" if value is True else value) for key, value in document.items() if value is not False}
    data["version"] = version
    data["csrf_token"] = csrf_from(admin.client, "/config")
    response = admin.client.post("/config", data=data)
    assert 400 <= response.status_code < 500
    assert criteria.current().version == 0


@pytest.mark.parametrize("page", ["²", "9" * 5000, str(HUGE), "-3"])
def test_the_audit_trail_takes_any_page_number(admin, page):
    response = admin.client.get("/admin/audit", query_string={"page": page})
    assert response.status_code == 200


@pytest.mark.parametrize("name", ["two\r\nlines", "nul\x00", "tab\t", "\u202eexe.txt"])
def test_a_model_name_with_control_characters_is_refused_beside_the_field(operator, name):
    token = csrf_from(operator.client, "/models")
    response = operator.client.post(
        "/models",
        content_type="multipart/form-data",
        data={"csrf_token": token, "name": name, "file": (io.BytesIO(b"not a model"), "m.onnx")},
    )
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert 'id="name-error"' in text or "NUL" in text
    assert db.session.query(ModelMetadata).count() == 0


def test_a_file_name_with_control_characters_never_becomes_the_model_name(operator, demo_files):
    token = csrf_from(operator.client, "/models")
    response = operator.client.post(
        "/models",
        content_type="multipart/form-data",
        data={
            "csrf_token": token,
            "file": (io.BytesIO(demo_files["onnx"].read_bytes()), "di\x1bgi\x07ts.onnx"),
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    assert db.session.query(ModelMetadata).one().name == "digits"


@pytest.mark.parametrize("path", ["/models?q=%00", "/sessions?owner=a%00", "/admin/audit?user=%00"])
def test_nul_in_a_query_string_is_a_400_page(admin, path):
    response = admin.client.get(path)
    assert response.status_code == 400
    assert "NUL" in response.get_data(as_text=True)


def test_nul_in_a_login_form_is_a_400(client):
    token = csrf_from(client, "/login")
    response = client.post("/login", data={"username": "ad\x00min", "password": "x", "csrf_token": token})
    assert response.status_code == 400


def test_the_artifact_page_download_has_a_safe_name(admin):
    model = gen_model(admin.user, name="bad\r\nname")
    session = gen_artifact(gen_session(model, admin.user, "completed"))
    response = admin.client.get(f"/sessions/{session.id}/artifact")
    assert response.status_code == 200
    response.close()
    assert response.headers["Content-Disposition"] == (
        f"attachment; filename=bad_name-session{session.id}-optimized.onnx"
    )


@pytest.mark.parametrize("target", ["/models%0d%0aSet-Cookie:%20x=1", "/%e2%80%a8"])
def test_a_next_address_with_control_characters_goes_to_the_dashboard(client, target):
    make_user("ada")
    token = csrf_from(client, "/login")
    response = client.post(
        f"/login?next={target}", data={"username": "ada", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"
    assert "x=1" not in response.headers.get("Set-Cookie", "")


def test_a_nul_anywhere_in_the_query_refuses_the_login_before_it_happens(client):
    make_user("ada")
    token = csrf_from(client, "/login")
    response = client.post(
        "/login?next=/models%00", data={"username": "ada", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 400
    assert client.get("/dashboard").status_code == 302  # still signed out
