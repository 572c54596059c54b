"""The OpenAPI description covers the whole API, and its UI needs nothing from outside."""

import re

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
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert "default" in responses, (path, method)
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
