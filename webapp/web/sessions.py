"""The optimization sessions page."""

from flask import render_template
from flask_login import current_user

from ..services import optimization
from . import page_blueprint

bp = page_blueprint("sessions", __name__)

RECENT = 50


@bp.get("/sessions")
def index():
    sessions = optimization.recent(current_user._get_current_object(), RECENT)
    return render_template("sessions/index.html", recent=RECENT,
                           sessions=[optimization.summary(s) for s in sessions])
