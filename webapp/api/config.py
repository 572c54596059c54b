"""The optimization criteria: read them, save a new version, list the versions."""

from __future__ import annotations

import re

from flask import g, request
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from ..auth.guards import roles_required
from ..bounds import MAX_ID
from ..engine.techniques import TECHNIQUES
from ..services import criteria, policy
from ..services.errors import ServiceError
from . import ApiBlueprint
from .schemas import ErrorSchema, Stored

blp = ApiBlueprint(
    "Configuration", __name__, description="The optimization criteria that plan and judge sessions."
)

ETAG = re.compile(r'^(?:W/)?"criteria-v(\d{1,10})"$', re.ASCII)


def _techniques(**kwargs) -> fields.List:
    """A list of technique ids, documented with the registry's ids; the criteria schema's
    own validators check them (against the registry as it is when they run)."""
    return fields.List(fields.String(metadata={"enum": list(TECHNIQUES)}), **kwargs)


class CriteriaOutSchema(criteria.CriteriaSchema):
    """The criteria with their version; every field is described in config.toml."""

    enabled_techniques = _techniques(required=True)
    forbidden_techniques = _techniques()

    version = fields.Integer(metadata={"description": "Send it back (or If-Match) to save"})
    updated_at = fields.DateTime(allow_none=True)
    updated_by = fields.String(allow_none=True)


class CriteriaInSchema(criteria.CriteriaSchema):
    enabled_techniques = _techniques(required=True, metadata={"minItems": 1})
    forbidden_techniques = _techniques(load_default=list)
    version = fields.Integer(
        strict=True,
        validate=validate.Range(min=0, max=MAX_ID),
        metadata={"description": "The version you edited (or If-Match)"},
    )


class VersionSchema(Schema):
    version = fields.Integer()
    updated_at = fields.DateTime(allow_none=True)
    updated_by = fields.String(allow_none=True)
    reverted_from = fields.Integer(allow_none=True)
    criteria = Stored(criteria.CriteriaSchema, attribute="document")


class VersionListSchema(Schema):
    versions = fields.List(fields.Nested(VersionSchema))
    current_version = fields.Integer()


def _based_on(body: dict) -> int | None:
    """The version the caller edited: If-Match wins over the body's `version`."""
    header = request.headers.get("If-Match")
    if header:
        match = ETAG.match(header.strip())
        if not match or int(match.group(1)) > MAX_ID:
            raise ServiceError(
                400,
                "validation_error",
                "If-Match must be an ETag this API gave.",
                {"If-Match": ['Expected "criteria-v<number>".']},
            )
        return int(match.group(1))
    return body.get("version")


@blp.route("/config/optimization-criteria")
class OptimizationCriteria(MethodView):
    @blp.doc(operationId="getCriteria")
    @blp.response(200, CriteriaOutSchema)
    def get(self):
        """The criteria in force, with their version (also as an ETag)."""
        in_force = criteria.current()
        return in_force.as_dict(), 200, {"ETag": in_force.etag}

    @roles_required(*policy.ADMINISTRATORS)
    @blp.doc(operationId="putCriteria")
    @blp.arguments(CriteriaInSchema)
    @blp.response(200, CriteriaOutSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="A value is invalid; `details` names it.")
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="Stale version (details hold the current criteria) or a contradictory combination.",
    )
    @blp.alt_response(428, schema=ErrorSchema, description="No If-Match header or version field.")
    def put(self, body):
        """Save the whole criteria as a new version (admins only).

        Name the version you edited with `If-Match: "criteria-v<N>"` or a `version`
        field; if someone saved meanwhile you get 409 and the current criteria."""
        saved = criteria.save(body, _based_on(body), g.api_user)
        return saved.as_dict(), 200, {"ETag": saved.etag}


@blp.route("/config/optimization-criteria/versions")
@blp.doc(operationId="listCriteriaVersions")
@blp.response(200, VersionListSchema)
def criteria_versions():
    """Every saved version, newest first (version 0 is the config.toml defaults)."""
    return {
        "versions": [*criteria.versions(), criteria.get_version(0)],
        "current_version": criteria.current().version,
    }
