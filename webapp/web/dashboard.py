"""The dashboard page; an htmx request for it gets its trade-off panel (another model)."""

from flask import render_template, request, url_for
from flask_login import current_user

from ..bounds import parse_id
from ..services import dashboard, system_status
from . import is_partial, page_blueprint

bp = page_blueprint("dashboard", __name__)


def _tradeoff(user):
    try:
        model_id = parse_id(request.args.get("model", ""))
    except ValueError:
        model_id = None  # the default model: a stale or edited link still shows a plot
    return dashboard.safely(
        dashboard.model_tradeoffs, user, model_id, lambda sid: url_for("sessions.detail", session_id=sid)
    )


@bp.get("/dashboard")
def index():
    user = current_user._get_current_object()
    if is_partial():
        return render_template("dashboard/_tradeoff.html", tradeoff=_tradeoff(user)), {"Vary": "HX-Request"}
    lists = dashboard.safely(dashboard.active_and_recent, user)
    active, recent = lists if lists is not None else ([], None)
    return (
        render_template(
            "dashboard/index.html",
            stats=dashboard.cached_stats(user),
            active=active,
            recent=recent,
            tradeoff=_tradeoff(user),
            status=dashboard.safely(system_status.current),
        ),
        {"Vary": "HX-Request"},
    )
