"""No input gives a 5xx: integers past what the database holds, dates past what Python holds,
JSON nested past any sense, strings no database or header takes, paths in answers."""

import io
import json
import re
import tempfile
from urllib.parse import unquote

import pytest

from tests.factories import gen_artifact, gen_model, gen_session
from webapp.extensions import db
from webapp.tables import ModelMetadata

HUGE = 2**64  # past SQLite's and PostgreSQL's bigint
PAST_INT4 = 2**31  # past PostgreSQL's integer, the type of every id column
DEEP = 100_000


def deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def assert_validation_error(response, field: str | None = None):
    assert response.status_code == 400, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["error"] == "validation_error"
    assert set(body) == {"error", "message", "details", "timestamp", "request_id"}
    if field is not None:
        assert field in json.dumps(body["details"]), body


@pytest.fixture
def admin_api(api_client):
    return api_client("admin")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/{n}",
        "/api/v1/optimization/sessions/{n}",
        "/api/v1/optimization/sessions/{n}/events",
        "/api/v1/optimization/sessions/{n}/artifact",
    ],
)
@pytest.mark.parametrize("number", [HUGE, PAST_INT4, 10**30])
def test_huge_ids_in_api_paths_are_404(admin_api, path, number):
    response = admin_api.get(path.format(n=number))
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_a_path_id_of_100000_digits_is_404(admin_api):
    """Past 4,300 digits int() itself fails, before any range check could."""
    assert admin_api.get("/api/v1/models/" + "1" * 100_000).status_code == 404


def test_leading_zeros_still_name_the_id(admin_api):
    model = gen_model(admin_api.user)
    assert admin_api.get(f"/api/v1/models/{model.id:020d}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("delete", "/api/v1/models/{n}"),
        ("post", "/api/v1/optimization/sessions/{n}/cancel"),
    ],
)
def test_huge_ids_in_changing_api_paths_are_404(admin_api, method, path):
    response = getattr(admin_api, method)(path.format(n=HUGE))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("model_id", HUGE),
        ("model_id", PAST_INT4),
        ("skip", HUGE),
        ("skip", PAST_INT4),
        ("skip", "9" * 5000),
        ("limit", HUGE),
        ("limit", -1),
        ("skip", -1),
        ("model_id", "1e400"),
        ("created_to", "9999-12-31"),
        ("created_from", "9999-12-31"),
        ("created_from", "0001-01-01T00:00:00+05:00"),
        ("created_to", "0001-01-01"),
        ("created_from", "99999-01-01"),
        ("created_to", "2026-01-01T00:00:00+25:00"),
        ("status", "exploded"),
        ("sort", "\x00"),
        ("owner", "a\x00b"),
    ],
)
def test_bad_list_parameters_are_400_naming_the_parameter(admin_api, param, value):
    response = admin_api.get("/api/v1/optimization/sessions", query_string={param: value})
    assert_validation_error(response, param)


def test_the_widest_dates_still_list(admin_api):
    response = admin_api.get(
        "/api/v1/optimization/sessions",
        query_string={"created_from": "1900-01-01", "created_to": "9000-12-31"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"model_id": HUGE},
        {"model_id": PAST_INT4},
        {"model_id": -HUGE},
        {"model_id": 1, "techniques": ["compression"], "parameters": {"compression": {"rank": HUGE}}},
        {"model_id": 1, "techniques": ["pruning"], "parameters": {"pruning": {"sparsity": 1e400}}},
    ],
)
def test_huge_numbers_in_a_session_start_are_400(admin_api, body):
    gen_model(admin_api.user)
    assert_validation_error(admin_api.post("/api/v1/optimization/sessions", json=body))


@pytest.mark.parametrize(
    "raw",
    [
        '{"model_id": ' + "9" * 5000 + "}",  # past Python's int-from-text limit
        '{"model_id": 1, "techniques": [], "parameters": {}, "x": NaN}',
        '{"model_id": 1, "techniques": [], "parameters": {"pruning": {"sparsity": Infinity}}}',
        '{"model_id": 1, "techniques": [], "parameters": {"pruning": {"sparsity": 1e999}}}',
        '{"model_id": 1, "techniques": ["\\u0000"]}',
        '{"model_id": 1, "techniques": ["\\ud800"]}',
    ],
)
def test_numbers_and_strings_no_database_takes_are_400(admin_api, raw):
    response = admin_api.post("/api/v1/optimization/sessions", data=raw, content_type="application/json")
    assert_validation_error(response)


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/v1/auth/token", "post"),
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/optimization/sessions", "post"),
        ("/api/v1/config/optimization-criteria", "put"),
    ],
)
@pytest.mark.parametrize(
    "body", [deep_json(), '{"a":' * DEEP + "1" + "}" * DEEP, "[" * DEEP, "[" * 65 + "]" * 65]
)
def test_deeply_nested_json_is_400(admin_api, path, method, body):
    response = getattr(admin_api, method)(path, data=body, content_type="application/json")
    assert_validation_error(response, "json")


def test_nesting_up_to_the_limit_parses(admin_api):
    nested = {"quantization": {"mode": "int8_dynamic"}}
    response = admin_api.post(
        "/api/v1/optimization/sessions",
        json={
            "model_id": 1,
            "techniques": ["quantization"],
            "parameters": nested,
            "extra": json.loads("[" * 62 + "]" * 62),
        },
    )
    # Parsed, then refused for its unknown field: the depth was not the problem.
    assert_validation_error(response, "extra")


def test_brackets_inside_strings_are_not_nesting(admin_api):
    response = admin_api.post("/api/v1/auth/token", json={"username": "x", "password": "[{" * 100})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("application/json", b'{"username": "\xff\xfe", "password": "x"}'),
        ("application/json; charset=utf-16", '{"username": "a"}'.encode("utf-16")),
        ("application/json", b"\xef\xbb\xbf{}"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"garbage"),
        ("application/x-www-form-urlencoded", b"username=%00&password=%ff"),
        ("text/plain", b"\x00" * 100),
        ("application/vnd.api+json", deep_json().encode()),
    ],
)
def test_odd_bodies_on_the_public_token_route_are_4xx(client, content_type, data):
    response = client.post("/api/v1/auth/token", data=data, content_type=content_type)
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"] in {"validation_error", "invalid_credentials"}


@pytest.mark.parametrize("username", ["a\x00b", "\ud800", "x" * 10_000])
def test_token_request_with_strange_usernames_is_4xx(client, username):
    response = client.post("/api/v1/auth/token", json={"username": username, "password": "pw"})
    assert response.status_code in (400, 401)


@pytest.mark.parametrize(
    "if_match",
    [
        '"criteria-v' + "1" * 5000 + '"',
        f'"criteria-v{HUGE}"',
        '"criteria-v١"',
        "\x00",
        "x" * 100_000,
    ],
)
def test_junk_if_match_is_400(admin_api, if_match):
    current = admin_api.get("/api/v1/config/optimization-criteria").get_json()
    response = admin_api.put(
        "/api/v1/config/optimization-criteria", json=current, headers={"If-Match": if_match}
    )
    assert_validation_error(response, "If-Match")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("version", HUGE, "version"),
        ("version", -1, "version"),
        ("threads", HUGE, "threads"),
        ("latency_batch_size", HUGE, "latency_batch_size"),
        ("name", "line\nbreak", "name"),
        # Refused while parsing the body, before any field is read.
        ("max_inference_time_ms", 1e308 * 10, "json"),
        ("name", "a\x00b", "json"),
    ],
)
def test_out_of_range_criteria_are_400(admin_api, field, value, named):
    current = admin_api.get("/api/v1/config/optimization-criteria").get_json()
    response = admin_api.put(
        "/api/v1/config/optimization-criteria",
        data=json.dumps({**current, field: value}),
        content_type="application/json",
    )
    assert_validation_error(response, named)


@pytest.mark.parametrize(
    "name",
    [
        "evil\r\nX-Injected: 1",
        "nul\x00name",
        "bell\x07",
        "tab\there",
        "esc\x1b[31m",
        "rlo\u202egnp.exe",
        "del\x7f",
        "ls\u2028",
    ],
)
def test_control_characters_in_a_model_name_are_refused_at_upload(admin_api, name):
    response = admin_api.post(
        "/api/v1/models",
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(b"not a model"), "m.onnx"), "name": name},
    )
    assert_validation_error(response, "name")
    assert db.session.query(ModelMetadata).count() == 0


@pytest.fixture
def artifact(admin_api):
    """A completed session of a model with the given stored name, with its file in storage."""

    def make(name):
        model = gen_model(admin_api.user, name=name)
        return gen_artifact(gen_session(model, admin_api.user, "completed"))

    return make


# Any name a database column holds (PostgreSQL's text takes no NUL; the column 200 characters).
STORED_NAMES = [
    "evil\r\nSet-Cookie: x=1",
    "bell\x07esc\x1b",
    'quo"te;\\/..',
    "",
    "../../etc/passwd",
    "模型 v2",
    "x" * 200,
    "\u202egnp.exe",
]


@pytest.mark.parametrize("stored", STORED_NAMES)
def test_artifact_download_name_is_safe_for_any_stored_name(admin_api, artifact, stored):
    """Rows from before the upload check may hold any name; the download still works."""
    session = artifact(stored)
    response = admin_api.get(f"/api/v1/optimization/sessions/{session.id}/artifact")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.data == b"onnx bytes"
    response.close()
    assert_safe_disposition(response.headers["Content-Disposition"], session.id)


def assert_safe_disposition(disposition: str, session_id: int):
    filenames = re.findall(r'filename\*?=(?:UTF-8\'\')?"?([^";]*)"?', disposition)
    assert filenames, disposition
    for name in filenames:
        name = unquote(name)
        assert name.endswith(f"session{session_id}-optimized.onnx"), disposition
        assert len(name) <= 160
        assert not name.startswith(".")
        assert all(ch.isalnum() or ch in "._-" for ch in name), name


def test_a_text_field_where_the_file_belongs_is_400(admin_api):
    response = admin_api.post(
        "/api/v1/models",
        content_type="multipart/form-data",
        data={"file": "not a file", "eval_data": "nor this"},
    )
    assert_validation_error(response, "file")
    assert "eval_data" in response.get_json()["details"]


def test_a_json_body_over_a_mebibyte_is_413_before_it_is_read(client):
    body = '{"username": "a", "password": "' + "x" * (1 << 20) + '"}'
    response = client.post("/api/v1/auth/token", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"


def test_input_shape_nested_deep_is_a_400_naming_it(admin_api):
    response = admin_api.post(
        "/api/v1/models",
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(b"not a model"), "m.onnx"), "input_shape": deep_json()},
    )
    assert_validation_error(response, "input_shape")


# The model files get as far as a sandboxed worker, whose refusal is checked here.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("files"),
    [
        {"file": (b"\x08\x01garbage", "m.onnx")},
        {"file": (b"PK\x03\x04" + bytes(100), "m.pt")},
        {"file": (b"\x08\x01garbage", "m.onnx"), "eval_data": (b"not an npz", "e.npz")},
    ],
    ids=["onnx", "zip", "eval-data"],
)
def test_refused_uploads_name_no_server_path(app, admin_api, files):
    response = admin_api.post(
        "/api/v1/models",
        content_type="multipart/form-data",
        data={name: (io.BytesIO(content), filename) for name, (content, filename) in files.items()},
    )
    assert 400 <= response.status_code < 500
    text = response.get_data(as_text=True)
    assert app.instance_path not in text and tempfile.gettempdir() not in text


def test_readyz_shows_no_server_paths(app, client):
    storage = app.config["OPTIDECK"]["storage"]["dir"]
    text = client.get("/readyz").get_data(as_text=True)
    assert storage not in text and app.instance_path not in text


def test_unwritable_storage_on_readyz_shows_no_path(make_app, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    app = make_app(storage={"dir": str(blocker / "store")})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert str(tmp_path) not in response.get_data(as_text=True)
    assert response.get_json()["checks"]["storage"]["ok"] is False
