"""Marshmallow schemas of the API's shared shapes."""

from marshmallow import Schema, fields


class ErrorSchema(Schema):
    """The body of every API error (DESIGN.md)."""

    error = fields.String(required=True, metadata={
        "description": "A stable word to switch on: validation_error, token_missing, "
                       "token_invalid, token_expired, forbidden, not_found, conflict, ...",
        "example": "token_expired"})
    message = fields.String(required=True, metadata={"example": "The token has expired."})
    details = fields.Raw(metadata={"description": "Field errors or other specifics."})
    timestamp = fields.DateTime(required=True)
    request_id = fields.String(required=True, metadata={"description": "Also in X-Request-ID."})


class TokenSchema(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "bearer"})
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds."})
    refresh_token = fields.String(required=True)
