"""An apispec plugin: document the authentication errors every guarded operation can answer."""

from __future__ import annotations

from apispec import BasePlugin

ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
UNAUTHORIZED = {
    **ERROR,
    "description": "No valid token: `error` is token_missing, token_invalid "
    "or token_expired (see /docs/api-tokens).",
}
FORBIDDEN = {**ERROR, "description": "Your role, or a read-only token, may not do this."}


class AuthErrorsPlugin(BasePlugin):
    """Adds 401 to every operation that needs a token, and 403 to those that change state.

    Operations open to all say so with `@blp.doc(security=[])`.
    """

    def operation_helper(self, path=None, operations=None, **kwargs):
        for method, operation in (operations or {}).items():
            if operation.get("security") == []:
                continue
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", UNAUTHORIZED)
            if method in {"post", "put", "patch", "delete"}:
                responses.setdefault("403", FORBIDDEN)
