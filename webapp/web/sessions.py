"""The optimization sessions pages."""

from flask import render_template

from . import page_blueprint

bp = page_blueprint("sessions", __name__)


@bp.get("/sessions")
def index():
    return render_template("sessions/index.html")
