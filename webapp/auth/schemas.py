"""Validation of account input, shared by the pages and the JSON API."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, pre_load, validate

from ..bounds import Printable
from ..tables import Role

USERNAME_RULE = validate.Regexp(
    r"^[a-z0-9][a-z0-9_.-]{0,63}$",
    error="Use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
)
PASSWORD_LENGTH = validate.Length(min=1, max=256)
NEW_PASSWORD_LENGTH = validate.Length(min=12, max=256, error="Use between {min} and {max} characters.")


class _Username(fields.String):
    """Usernames compare case-insensitively: stored and looked up in lower case."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        return text.strip().lower()


class LoginSchema(Schema):
    username = _Username(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, load_only=True, validate=PASSWORD_LENGTH)


class RefreshSchema(Schema):
    refresh_token = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=200))


class NewUserSchema(Schema):
    username = _Username(required=True, validate=USERNAME_RULE)
    password = fields.String(required=True, load_only=True, validate=NEW_PASSWORD_LENGTH)
    role = fields.String(required=True, validate=validate.OneOf([r.value for r in Role]))


class RoleChangeSchema(Schema):
    role = fields.String(required=True, validate=validate.OneOf([r.value for r in Role]))


class NewTokenSchema(Schema):
    name = fields.String(required=True, validate=[validate.Length(min=1, max=100), Printable()])
    read_only = fields.Boolean(load_default=False)
    # A century: past any lifetime the settings may allow, within what a date can add.
    expires_in_days = fields.Integer(required=True, validate=validate.Range(min=1, max=36_500))

    @pre_load
    def _strip_name(self, data, **kwargs):
        if isinstance(data.get("name"), str):
            data = {**data, "name": data["name"].strip()}
        return data


def load_form(schema: Schema, form) -> tuple[dict, dict[str, list[str]]]:
    """Validate an HTML form with the API's schema: (data, errors by field)."""
    raw = {key: form.get(key) for key in schema.fields if key in form}
    for name, field in schema.fields.items():
        # An unticked checkbox sends nothing; to the schema that is `false`.
        if isinstance(field, fields.Boolean) and name not in form:
            raw[name] = False
    try:
        return schema.load(raw), {}
    except ValidationError as exc:
        return {}, exc.normalized_messages()
