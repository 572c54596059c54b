"""The JSON API under /api/v1 (flask-smorest: marshmallow in, marshmallow out)."""

from __future__ import annotations

import marshmallow as ma
from flask import Flask
from flask_cors import CORS
from flask_smorest import Blueprint
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request
from werkzeug.datastructures import CombinedMultiDict

from ..auth.guards import authenticate_api_request
from ..bounds import YEAR_PATTERN, parse_json
from ..extensions import api, csrf
from .schemas import ErrorSchema
from .spec import AuthErrorsPlugin

PREFIX = "/api/v1"


class _Parser(FlaskParser):
    # The error contract: a body or query that fails validation is a 400, not webargs' 422.
    DEFAULT_VALIDATION_STATUS = 400
    # A multipart body's files and fields in one schema, so OpenAPI documents one requestBody.
    __location_map__ = {**FlaskParser.__location_map__, "form_and_files": "load_form_and_files"}
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "form_and_files": ma.EXCLUDE}

    def load_form_and_files(self, req, schema):
        return self._makeproxy(CombinedMultiDict([req.files, req.form]), schema)

    def _raw_load_json(self, req):
        # webargs parses bodies itself, past Flask's request.get_json and its limits.
        if not is_json_request(req):
            return core.missing
        return parse_json(req.get_data(cache=True))

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        abort(400, exc=error, messages={"json": [f"Invalid JSON body: {error}"]})


class ApiBlueprint(Blueprint):
    """A resource blueprint: token required unless a view is marked @public."""

    ARGUMENTS_PARSER = _Parser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "form_and_files": "multipart/form-data",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.before_request(authenticate_api_request)
        # Bearer tokens, not cookies, authenticate here, so there is no CSRF to stop.
        csrf.exempt(self)


def _date_filters(self, field, **kwargs) -> dict:
    """The session list's date filters (a field of their own, unknown to apispec): a date
    or a date-time, in the years bounds.parse_datetime accepts."""
    from ..services.session_query import SessionQuerySchema

    if type(field) is not type(SessionQuerySchema._declared_fields["created_from"]):
        return {}
    return {
        "anyOf": [
            {"type": "string", "format": "date", "pattern": YEAR_PATTERN},
            {"type": "string", "format": "date-time", "pattern": YEAR_PATTERN},
        ]
    }


def _nullable_refs(self, field, ret, **kwargs) -> dict:
    """A nullable nested schema as `allOf: [$ref], nullable: true`. apispec writes
    `anyOf: [{type: object, nullable: true}, $ref]`, whose first branch takes any object:
    generated clients then parse the results as an untyped dict."""
    branches = ret.get("anyOf", [])
    refs = [branch for branch in branches if "$ref" in branch]
    if len(branches) == 2 and len(refs) == 1 and {"type": "object", "nullable": True} in branches:
        del ret["anyOf"]
        return {"allOf": refs, "nullable": True}
    return {}


def init_app(app: Flask) -> None:
    app.config.update(
        API_TITLE="Optideck API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        # /api/v1/openapi.json and Swagger UI at /api/docs, from vendored files (no CDN).
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="v1/openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/static/vendor/swagger-ui/",
        OPENAPI_SWAGGER_UI_CONFIG={"tryItOutEnabled": True, "persistAuthorization": False},
        API_SPEC_OPTIONS={
            "info": {
                "description": (
                    "The JSON face of Optideck: models, optimization sessions, dashboard statistics. "
                    "Authenticate with `Authorization: Bearer <token>`: get one from "
                    "POST /api/v1/auth/token or the API tokens page, then press Authorize. "
                    "How to obtain, refresh and revoke tokens, and what each 401 and 403 means: "
                    "/docs/api-tokens. Every error has the body {error, message, details, "
                    "timestamp, request_id}."
                )
            }
        },
    )
    api.ERROR_SCHEMA = ErrorSchema
    api.init_app(app, spec_kwargs={"extra_plugins": [AuthErrorsPlugin()]})
    api.spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from POST /api/v1/auth/token or /account/tokens.",
        },
    )
    api.spec.options["security"] = [{"bearerAuth": []}]
    api.ma_plugin.converter.add_attribute_function(_date_filters)
    api.ma_plugin.converter.add_attribute_function(_nullable_refs)

    from . import auth, config, dashboard, models, sessions

    for module in (auth, dashboard, models, sessions, config):
        api.register_blueprint(module.blp, url_prefix=PREFIX)

    origins = app.config["OPTIDECK"]["cors"]["origins"]
    if origins:
        # Bearer tokens travel in a header; cookies never cross origins.
        CORS(app, resources={rf"{PREFIX}/*": {"origins": origins}}, supports_credentials=False)
