"""The dashboard page."""

from flask import render_template

from . import page_blueprint

bp = page_blueprint("dashboard", __name__)


@bp.get("/dashboard")
def index():
    return render_template("dashboard/index.html")
