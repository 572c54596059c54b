"""The dashboard page."""

from flask import render_template
from flask_login import current_user

from ..services import dashboard, optimization
from . import page_blueprint

bp = page_blueprint("dashboard", __name__)


@bp.get("/dashboard")
def index():
    user = current_user._get_current_object()
    return render_template("dashboard/index.html", stats=dashboard.stats(user),
                           sessions=[optimization.summary(s) for s in optimization.recent(user, 10)])
