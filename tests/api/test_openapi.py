"""The OpenAPI description covers the whole API, and its UI needs nothing from outside."""

import re

import pytest
from openapi_spec_validator import validate

ERROR_REF = "#/components/schemas/Error"


def spec(client):
    return client.get("/api/v1/openapi.json").get_json()


def test_every_api_route_is_in_the_spec(app, client):
    documented = {
        (path, method.upper())
        for path, operations in spec(client)["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "delete", "patch"}
    }
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.endpoint.startswith("api-docs."):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {path} is missing from the spec"


def test_operations_document_their_errors_with_the_error_schema(client):
    document = spec(client)
    assert set(document["components"]["schemas"]["Error"]["properties"]) == {
        "error",
        "message",
        "details",
        "timestamp",
        "request_id",
    }
    public = {("/api/v1/auth/token", "post"), ("/api/v1/auth/refresh", "post")}
    # The socket's token may come after the upgrade: refused in an event, never an HTTP 401.
    socket = ("/api/v1/ws", "get")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert "default" in responses, (path, method)
            if (path, method) == socket:
                assert operation["security"] == [] and ERROR_REF in repr(responses["426"])
                continue
            if (path, method) in public:
                assert operation["security"] == [] and "401" in responses  # bad credentials
                continue
            assert ERROR_REF in repr(responses["401"]), (path, method)
            if method != "get":
                assert ERROR_REF in repr(responses["403"]), (path, method)


def test_bearer_security_and_list_parameters_are_described(client):
    document = spec(client)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]
    params = {p["name"]: p for p in document["paths"]["/api/v1/optimization/sessions"]["get"]["parameters"]}
    assert {"status", "model_id", "created_from", "created_to", "skip", "limit", "sort"} <= set(params)
    assert params["limit"]["schema"]["maximum"] == 100


def test_swagger_ui_is_served_from_vendored_files(client):
    page = client.get("/api/docs").get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(s.startswith("/static/vendor/swagger-ui/") for s in sources)
    for source in sources:
        response = client.get(source)
        assert response.status_code == 200
        response.close()


def test_token_docs_page_is_public_and_explains_every_code(client):
    page = client.get("/docs/api-tokens").get_data(as_text=True)
    for code in ("token_missing", "token_invalid", "token_expired", "forbidden", "invalid_credentials"):
        assert code in page
    assert "curl" in page


def test_the_document_is_valid_openapi(client):
    validate(spec(client))


def test_the_upload_is_one_multipart_body_with_its_files_and_fields(client):
    post = spec(client)["paths"]["/api/v1/models"]["post"]
    assert "parameters" not in post  # no Swagger 2 `in: formData`
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    name = body["$ref"].rsplit("/", 1)[1]
    fields = spec(client)["components"]["schemas"][name]
    assert fields["required"] == ["file"]
    assert set(fields["properties"]) == {"file", "eval_data", "name", "input_shape", "task"}
    assert fields["properties"]["task"]["enum"] == ["auto", "classification", "detection", "ctc", "agreement"]
    assert fields["properties"]["task"]["default"] == "auto"
    for upload in ("file", "eval_data"):
        assert fields["properties"][upload] | {"description": ""} == {
            "type": "string",
            "format": "binary",
            "description": "",
        }


def test_path_ids_are_documented_with_their_range(client):
    parameters = spec(client)["paths"]["/api/v1/models/{model_id}"]["parameters"]
    assert parameters[0]["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}


def operations(document):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if method != "parameters":
                yield path, method, operation


def test_every_operation_has_a_unique_readable_operation_id(client):
    ids = {(path, method): op.get("operationId") for path, method, op in operations(spec(client))}
    assert all(ids.values()) and len(set(ids.values())) == len(ids), ids
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", name) for name in ids.values()), ids
    assert ids[("/api/v1/optimization/sessions", "get")] == "listSessions"
    assert ids[("/api/v1/optimization/sessions/{session_id}/artifact", "get")] == "downloadSessionArtifact"
    assert ids[("/api/v1/models", "post")] == "uploadModel"
    assert ids[("/api/v1/auth/token", "delete")] == "revokeToken"
    assert ids[("/api/v1/optimization/sessions/compare", "get")] == "compareSessions"


def _resolve(document, schema):
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for combined in ("allOf", "anyOf"):  # a nullable one: apispec's null branch, and the $ref
        refs = [branch for branch in schema.get(combined, []) if "$ref" in branch]
        if refs:
            return _resolve(document, refs[0])
    return schema


def test_the_session_parts_are_typed_schemas_not_bare_objects(client):
    document = spec(client)
    detail = document["components"]["schemas"]["SessionDetail"]["properties"]
    for name in ("results", "criteria", "parameters"):
        assert _resolve(document, detail[name]).get("properties"), name
    assert _resolve(document, detail["plan"]["items"])["properties"]["technique"]["enum"] == [
        "compression",
        "pruning",
        "quantization",
        "auto",
    ]
    results = _resolve(document, detail["results"])["properties"]
    assert {"candidates", "chosen", "steps", "criteria_met", "accuracy_retention_percent"} <= set(results)
    candidate = _resolve(document, results["candidates"]["items"])["properties"]
    assert {"configuration", "pareto", "latency_ms", "latency_low_ms", "latency_high_ms"} <= set(candidate)
    model = document["components"]["schemas"]["Model"]["properties"]
    assert _resolve(document, model["analysis"])["properties"]["op_histogram"]["type"] == "object"
    event = document["components"]["schemas"]["SessionEvent"]["properties"]
    assert _resolve(document, event["data"]).get("properties")
    live = document["components"]["schemas"]["LiveEvent"]["properties"]
    assert "session_completed" in live["event"]["enum"] and live["data"]["anyOf"]
    start = document["components"]["schemas"]["SessionStart"]["properties"]
    assert "auto" in start["techniques"]["items"]["enum"]


def test_the_artifact_csv_and_date_filters_declare_their_formats(client):
    paths = spec(client)["paths"]
    artifact = paths["/api/v1/optimization/sessions/{session_id}/artifact"]["get"]["responses"]["200"]
    assert artifact["content"]["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    params = {p["name"]: p for p in paths["/api/v1/optimization/sessions"]["get"]["parameters"]}
    for name in ("created_from", "created_to"):
        formats = {branch["format"] for branch in params[name]["schema"]["anyOf"]}
        assert formats == {"date", "date-time"}


def test_the_websocket_declares_since_and_its_plain_http_answers(client):
    operation = spec(client)["paths"]["/api/v1/ws"]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["since"]
    assert {"101", "400", "426"} <= set(operation["responses"])


def test_a_plain_get_of_the_websocket_answers_as_documented(client):
    """Is a browser tab or curl on /api/v1/ws told what the document says, in the error body?"""
    response = client.get("/api/v1/ws", headers={"X-Request-ID": "plain-get"})
    assert response.status_code == 426
    assert response.headers["Upgrade"] == "websocket"
    body = response.get_json()
    assert body["error"] == "upgrade_required" and body["request_id"] == "plain-get"
    assert set(body) == {"error", "message", "details", "timestamp", "request_id"}


@pytest.mark.parametrize("since", ["garbage", "", "0001-01-01T00:00:00+05:00", "99999-01-01"])
def test_a_bad_since_is_refused_before_the_handshake(client, since):
    response = client.get(
        "/api/v1/ws", query_string={"since": since}, headers={"Upgrade": "websocket", "Connection": "Upgrade"}
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "validation_error" and "since" in body["details"]


def test_the_comparison_is_a_typed_schema_with_its_errors(client):
    """Does compareSessions document its ids, its typed rows and cells, and its errors?"""
    document = spec(client)
    operation = document["paths"]["/api/v1/optimization/sessions/compare"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["ids"]["schema"]["items"]["type"] == "integer"
    assert (params["ids"]["schema"]["minItems"], params["ids"]["schema"]["maxItems"]) == (2, 6)
    assert params["model_id"]["schema"]["type"] == "integer"
    for status in ("400", "401", "404"):
        assert ERROR_REF in repr(operation["responses"][status]), status
    answer = _resolve(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(answer["properties"]) == {"sessions", "rows", "floor"}
    assert (
        _resolve(document, answer["properties"]["sessions"]["items"])
        == document["components"]["schemas"]["Session"]
    )
    row = _resolve(document, answer["properties"]["rows"]["items"])["properties"]
    assert row["kind"]["enum"] == ["bytes", "ms", "pct", "text", "x"] and row["differs"]["type"] == "boolean"
    cell = _resolve(document, row["cells"]["items"])["properties"]
    assert {branch["type"] for branch in cell["value"]["anyOf"]} == {"number", "string"}
    assert all(branch["nullable"] for branch in cell["value"]["anyOf"])
    assert cell["best"]["type"] == "boolean" and cell["low"] == {"type": "number", "nullable": True}
