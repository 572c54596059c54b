"""The dashboard page."""

from flask import render_template
from flask_login import current_user

from ..services import dashboard, system_status
from . import page_blueprint

bp = page_blueprint("dashboard", __name__)


@bp.get("/dashboard")
def index():
    user = current_user._get_current_object()
    lists = dashboard.safely(dashboard.active_and_recent, user)
    active, recent = lists if lists is not None else ([], None)
    return render_template(
        "dashboard/index.html",
        stats=dashboard.cached_stats(user),
        active=active,
        recent=recent,
        chart=dashboard.safely(dashboard.chart, user) or None,
        status=dashboard.safely(system_status.current),
    )
