"""Who may do what: one set of checks for pages and for the API.

Every route is closed unless it says otherwise: web blueprints require a login,
API blueprints a bearer token, and `@roles_required` narrows a view further.
"""

from __future__ import annotations

from functools import wraps

from flask import current_app, g, request
from flask_login import current_user

from ..errors import ApiError, is_api_request
from ..services import audit, caching, tokens
from ..tables import Role, User

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def public(view):
    """Mark an API view as reachable without a token (login, refresh, the spec)."""
    view.optideck_public = True
    return view


def read_only_allowed(view):
    """Mark a state-changing API view that a read-only token may still call."""
    view.optideck_read_only_allowed = True
    return view


def _view_flag(name: str) -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return False
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        view = getattr(view_class, request.method.lower(), None)
    return bool(getattr(view, name, False))


def current_actor() -> User | None:
    """The user behind this request: the token's on the API, the session's on pages."""
    if is_api_request():
        return g.get("api_user")
    return current_user if current_user.is_authenticated else None


def authenticate_api_request() -> None:
    """before_request of every API blueprint."""
    if request.method == "OPTIONS" or _view_flag("optideck_public"):
        return
    # The lists' and accounts' generations in one round trip: the token's check uses one,
    # a cached list page the other (read before the page's rows, as it must be).
    generations = caching.generations()
    g.list_generation = generations["list"] if generations else None
    try:
        user, token = tokens.authenticate(
            request.headers.get("Authorization"), generations["auth"] if generations else None
        )
    except tokens.TokenRejected as exc:
        raise ApiError(
            401, exc.code, exc.message, headers={"WWW-Authenticate": 'Bearer realm="optideck"'}
        ) from exc
    g.api_user, g.api_token = user, token
    if (
        token.read_only
        and request.method not in SAFE_METHODS
        and not _view_flag("optideck_read_only_allowed")
    ):
        audit.deny(f"api.{request.method.lower()}", user, resource=request.path, detail="read-only token")


def roles_required(*roles: Role):
    """Let only these roles through; everyone else gets an audited 403."""
    allowed = {Role(role).value for role in roles}

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            actor = current_actor()
            if actor is None or actor.role not in allowed:
                audit.deny(
                    f"{request.method.lower()} {request.endpoint}",
                    actor,
                    resource=request.path,
                    detail=f"needs role {sorted(allowed)}",
                )
            return view(*args, **kwargs)

        return wrapper

    return decorate
