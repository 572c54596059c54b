"""HTML blueprints. Every page needs a login; admin pages need the admin role."""

from datetime import UTC, datetime
from urllib.parse import urlencode

from flask import Blueprint, Flask, g, redirect, request, url_for
from flask_login import login_required

from ..services import policy
from . import filters


def is_partial() -> bool:
    """htmx asks for a fragment; a reload, a shared link or a history restore for the page."""
    return bool(request.headers.get("HX-Request")) and not request.headers.get("HX-History-Restore-Request")


def page_blueprint(name: str, import_name: str, **kwargs) -> Blueprint:
    """A blueprint whose every route requires a logged-in user."""
    bp = Blueprint(name, import_name, **kwargs)

    @bp.before_request
    @login_required
    def require_login():
        return None

    return bp


LIVE_PAGES = {"sessions.index": "sessions", "dashboard.index": "dashboard", "sessions.detail": "session"}


def live_url() -> str:
    """Where this page's WebSocket connects: its kind, its session, and when the page began
    reading the database (the socket then catches up on everything changed since)."""
    args = {
        "page": LIVE_PAGES.get(request.endpoint or "", "other"),
        # (An error page may come before note_read_time ran.)
        "since": (g.get("page_read_from") or datetime.now(UTC)).isoformat(),
    }
    if args["page"] == "session":
        args["session"] = request.view_args.get("session_id")
    return "/ws?" + urlencode(args)


def init_app(app: Flask) -> None:
    @app.before_request
    def note_read_time():
        # Taken before any query: a session that changes while the page renders is then
        # sent again over the socket, not lost between the query and the render.
        g.page_read_from = datetime.now(UTC)

    filters.init_app(app)
    app.add_template_global(live_url)
    # Role rules for templates, from the one module that holds them.
    for rule in (policy.can_administer, policy.can_create, policy.sees_everything):
        app.add_template_global(rule)

    from . import account, admin, config, dashboard, docs, models, sessions

    for module in (dashboard, sessions, models, config, account, admin, docs):
        app.register_blueprint(module.bp)

    @app.get("/")
    def home():
        return redirect(url_for("dashboard.index"))
