"""Documentation pages, readable without logging in (they hold no data)."""

from flask import Blueprint, render_template, request

bp = Blueprint("docs", __name__)


@bp.get("/docs/api-tokens")
def api_tokens():
    return render_template("docs/api_tokens.html", base_url=request.host_url.rstrip("/"))
