"""Documentation pages, readable without logging in (they hold no data)."""

from flask import Blueprint, render_template, request

from ..engine.metrics import TASKS
from ..engine.search import AUTO
from ..engine.techniques import TECHNIQUES

bp = Blueprint("docs", __name__)


@bp.get("/docs/api-tokens")
def api_tokens():
    return render_template("docs/api_tokens.html", base_url=request.host_url.rstrip("/"))


@bp.get("/docs/sessions")
def sessions():
    """Starting a session, reading its report and a search's front, comparing sessions. The
    techniques and their parameters come from the registry, so the page never drifts."""
    return render_template(
        "docs/sessions.html",
        base_url=request.host_url.rstrip("/"),
        techniques=sorted(TECHNIQUES.values(), key=lambda t: t.order),
        tasks=list(TASKS.values()),
        auto=AUTO,
    )
