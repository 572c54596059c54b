"""Dashboard statistics."""

from __future__ import annotations

from flask import g

from ..services import dashboard
from . import ApiBlueprint
from .schemas import DashboardStatsSchema

blp = ApiBlueprint("Dashboard", __name__, description="Counts and averages for the dashboard.")


@blp.route("/dashboard/stats")
@blp.response(200, DashboardStatsSchema)
def stats():
    """Counts of models and sessions, and averages over completed sessions, as you see them."""
    return dashboard.stats(g.api_user)
