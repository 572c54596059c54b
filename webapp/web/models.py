"""The model store pages."""

from flask import render_template

from . import page_blueprint

bp = page_blueprint("models", __name__)


@bp.get("/models")
def index():
    return render_template("models/index.html")
