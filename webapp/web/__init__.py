"""HTML blueprints. Every page needs a login; admin pages need the admin role."""

from flask import Blueprint, Flask, redirect, url_for
from flask_login import login_required


def page_blueprint(name: str, import_name: str, **kwargs) -> Blueprint:
    """A blueprint whose every route requires a logged-in user."""
    bp = Blueprint(name, import_name, **kwargs)

    @bp.before_request
    @login_required
    def require_login():
        return None

    return bp


def init_app(app: Flask) -> None:
    from . import account, admin, config, dashboard, models, sessions

    for module in (dashboard, sessions, models, config, account, admin):
        app.register_blueprint(module.bp)

    @app.get("/")
    def home():
        return redirect(url_for("dashboard.index"))
