"""Dashboard statistics, scoped to what the user may see, cached briefly.

Each part is computed on its own: if one fails, the others still show and the
failed part is named in `unavailable`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..tables import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    ModelMetadata,
    OptimizationSession,
    SessionStatus,
    User,
)
from . import caching, criteria, policy, session_summaries, tradeoff
from .optimization import query_for

log = logging.getLogger("optideck.dashboard")

# The dashboard plots a model's latest sessions, not all of them.
TRADEOFF_SESSIONS = 40


def cached_stats(user: User) -> dict:
    return caching.cached_for_generation(
        user, "dashboard:stats", lambda: stats(user), keep=lambda fresh: not fresh["unavailable"]
    )


def _scoped(query, user: User):
    return policy.scope(query, OptimizationSession.owner_id, user)


def _model_count(user: User) -> dict:
    query = select(func.count()).select_from(ModelMetadata).where(ModelMetadata.deleted_at.is_(None))
    return {"total_models": db.session.scalar(policy.scope(query, ModelMetadata.owner_id, user)) or 0}


def _session_figures(user: User) -> dict:
    # One pass over ix_sessions_status_results (status, size, speed), without touching the
    # rows, gives the counts by status and the averages over completed sessions.
    rows = db.session.execute(
        _scoped(
            select(
                OptimizationSession.status,
                func.count(),
                func.avg(OptimizationSession.size_reduction_percent),
                func.avg(OptimizationSession.speed_improvement_percent),
            ).group_by(OptimizationSession.status),
            user,
        )
    ).all()
    by_status = {status: count for status, count, _, _ in rows}
    completed = next((row for row in rows if row[0] == SessionStatus.COMPLETED.value), (None, 0, None, None))
    return {
        "total_sessions": sum(by_status.values()),
        "active_optimizations": sum(by_status.get(s, 0) for s in ACTIVE_STATUSES),
        "completed_optimizations": by_status.get(SessionStatus.COMPLETED.value, 0),
        "failed_optimizations": by_status.get(SessionStatus.FAILED.value, 0),
        "average_size_reduction": round(float(completed[2] or 0.0), 2),
        "average_speed_improvement": round(float(completed[3] or 0.0), 2),
    }


PARTS = {
    "total_models": _model_count,
    "sessions": _session_figures,
}
PART_FIELDS = {
    "total_models": ("total_models",),
    "sessions": (
        "total_sessions",
        "active_optimizations",
        "completed_optimizations",
        "failed_optimizations",
        "average_size_reduction",
        "average_speed_improvement",
    ),
}


def stats(user: User) -> dict:
    """The dashboard's fields (the README's JSON API); a part that fails is None and named in
    `unavailable`."""
    result: dict = {"unavailable": []}
    for name, compute in PARTS.items():
        try:
            result.update(compute(user))
        except SQLAlchemyError:
            db.session.rollback()
            log.exception("dashboard part %s failed", name)
            result["unavailable"].append(name)
            result.update(dict.fromkeys(PART_FIELDS[name]))
    result["last_updated"] = datetime.now(UTC)
    return result


def safely(compute, *args, **kwargs):
    """A dashboard panel's data, or None when it cannot be computed (the page says so)."""
    try:
        return compute(*args, **kwargs)
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("dashboard panel %s failed", compute.__name__)
        return None


def active_and_recent(user: User, recent: int = 8) -> tuple[list[dict], list[dict]]:
    base = query_for(user)
    active = db.session.scalars(
        base.where(OptimizationSession.status.in_(ACTIVE_STATUSES))
        .order_by(OptimizationSession.created_at.desc())
        .limit(20)
    )
    finished = db.session.scalars(
        base.where(OptimizationSession.status.in_(FINISHED_STATUSES))
        .order_by(OptimizationSession.completed_at.desc())
        .limit(recent)
    )
    return ([session_summaries.summary(s) for s in active], [session_summaries.summary(s) for s in finished])


def model_tradeoffs(user: User, model_id: int | None, href) -> dict | None:
    """One model's completed sessions as trade-off plots (accuracy retention against size
    reduction and against speedup): the model asked for, else the one that finished a
    session last. None before any session completes. `href(session_id)` links each point."""
    done = query_for(user).where(
        OptimizationSession.status == SessionStatus.COMPLETED.value,
        OptimizationSession.size_reduction_percent.is_not(None),
    )
    latest = func.max(OptimizationSession.completed_at)
    model = (OptimizationSession.model_id, ModelMetadata.name, ModelMetadata.version)
    models = db.session.execute(
        done.with_only_columns(*model, latest)
        .join(ModelMetadata, ModelMetadata.id == OptimizationSession.model_id)
        .where(ModelMetadata.deleted_at.is_(None))
        .group_by(*model)
        .order_by(latest.desc())
    ).all()
    if not models:
        return None
    chosen = next((m for m in models if m.model_id == model_id), models[0])
    sessions = session_summaries.summaries(
        done.where(OptimizationSession.model_id == chosen.model_id)
        .order_by(OptimizationSession.completed_at.desc())
        .limit(TRADEOFF_SESSIONS)
    )
    floor = float(criteria.current().document["min_accuracy_retention_percent"])
    return {
        "models": [(m.model_id, f"{m.name} v{m.version}") for m in models],
        "model_id": chosen.model_id,
        "model": f"{chosen.name} v{chosen.version}",
        "count": len(sessions),
        "latest_ids": [s["session_id"] for s in sessions[:6]],
        "plots": tradeoff.session_plots(sessions, floor, href),
        "floor": floor,
    }
