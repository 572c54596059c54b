"""Tokens for scripts: log in, refresh, revoke."""

from __future__ import annotations

from flask import g

from ..auth.budget import login_budget
from ..auth.guards import public, read_only_allowed
from ..auth.schemas import LoginSchema, RefreshSchema
from ..auth.views import login_limit
from ..errors import ApiError
from ..extensions import limiter
from ..services import tokens, users
from ..tables import utcnow
from . import ApiBlueprint
from .schemas import ErrorSchema, TokenSchema

blp = ApiBlueprint("Tokens", __name__, description="Obtain, refresh and revoke bearer tokens.")


def _token_body(issued: tokens.IssuedToken) -> dict:
    seconds_left = (issued.record.expires_at - utcnow()).total_seconds()
    return {
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": max(0, int(seconds_left)),
        "refresh_token": issued.refresh_token,
    }


@blp.route("/auth/token", methods=["POST"])
@login_budget
@public
@blp.doc(security=[])
@blp.doc(operationId="createToken")
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Wrong username or password.")
@blp.alt_response(
    429, schema=ErrorSchema, description="Too many failed logins from this address or for this account."
)
def issue_token(credentials):
    """Log in with a username and password; get an access and a refresh token."""
    user = users.log_in(credentials["username"], credentials["password"], "api")
    if user is None:
        raise ApiError(401, "invalid_credentials", "Wrong username or password.")
    return _token_body(tokens.issue_login_token(user))


@blp.route("/auth/refresh", methods=["POST"])
@limiter.limit(login_limit)
@public
@blp.doc(security=[])
@blp.doc(operationId="refreshToken")
@blp.arguments(RefreshSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Refresh token invalid or expired.")
def refresh_token(body):
    """Swap a refresh token for a new access and refresh token."""
    try:
        return _token_body(tokens.refresh(body["refresh_token"]))
    except tokens.TokenRejected as exc:
        raise ApiError(401, exc.code, exc.message) from exc


@blp.route("/auth/token", methods=["DELETE"])
@read_only_allowed
@blp.doc(operationId="revokeToken")
@blp.response(204)
@blp.alt_response(401, schema=ErrorSchema, description="No valid token was sent.")
def revoke_token():
    """Revoke the token this request was made with (and its refresh token)."""
    tokens.revoke(g.api_token, by=g.api_user)
