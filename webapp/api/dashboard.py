"""Dashboard statistics."""

from __future__ import annotations

from flask import g

from ..services import dashboard
from . import ApiBlueprint
from .schemas import DashboardStatsSchema

blp = ApiBlueprint("Dashboard", __name__, description="Counts and averages for the dashboard.")


@blp.route("/dashboard/stats")
@blp.doc(operationId="getDashboardStats")
@blp.response(200, DashboardStatsSchema)
def stats():
    """Counts of models and sessions, and averages over completed sessions, as you see them.

    Cached for a few seconds; any change of a session's state or of the models clears it.
    A part that cannot be computed is null and named in `unavailable`."""
    return dashboard.cached_stats(g.api_user)
