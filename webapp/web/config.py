"""The configuration page: the server's effective settings, secrets masked."""

from flask import current_app, render_template

from ..config import masked
from . import page_blueprint

bp = page_blueprint("config", __name__)


@bp.get("/config")
def index():
    return render_template("config/index.html", settings=masked(current_app.config["OPTIDECK"]))
