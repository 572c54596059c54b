"""The JSON API under /api/v1 (flask-smorest: marshmallow in, marshmallow out)."""

from __future__ import annotations

from flask import Flask
from flask_cors import CORS
from flask_smorest import Blueprint
from webargs.flaskparser import FlaskParser

from ..auth.guards import authenticate_api_request
from ..extensions import api, csrf
from .schemas import ErrorSchema

PREFIX = "/api/v1"


class _Parser(FlaskParser):
    # DESIGN.md: a body or query that fails validation is a 400, not webargs' 422.
    DEFAULT_VALIDATION_STATUS = 400


class ApiBlueprint(Blueprint):
    """A resource blueprint: token required unless a view is marked @public."""

    ARGUMENTS_PARSER = _Parser()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.before_request(authenticate_api_request)
        # Bearer tokens, not cookies, authenticate here, so there is no CSRF to stop.
        csrf.exempt(self)


def init_app(app: Flask) -> None:
    app.config.update(
        API_TITLE="Optideck API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX=PREFIX,
        OPENAPI_JSON_PATH="openapi.json",
    )
    api.ERROR_SCHEMA = ErrorSchema
    api.init_app(app)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer",
                       "description": "A token from POST /api/v1/auth/token or /account/tokens."}
    )
    api.spec.options["security"] = [{"bearerAuth": []}]

    from . import auth, dashboard, models, sessions

    for module in (auth, dashboard, models, sessions):
        api.register_blueprint(module.blp, url_prefix=PREFIX)

    origins = app.config["OPTIDECK"]["cors"]["origins"]
    if origins:
        # Bearer tokens travel in a header; cookies never cross origins.
        CORS(app, resources={rf"{PREFIX}/*": {"origins": origins}}, supports_credentials=False)
