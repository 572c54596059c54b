"""Dashboard statistics, scoped to what the user may see."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import case, func, select

from ..extensions import db
from ..models import ACTIVE_STATUSES, ModelMetadata, OptimizationSession, SessionStatus, User
from . import visibility


def stats(user: User) -> dict:
    sessions = select(OptimizationSession)
    models = select(ModelMetadata).where(ModelMetadata.deleted_at.is_(None))
    if not visibility.sees_everything(user):
        sessions = sessions.where(OptimizationSession.owner_id == user.id)
        models = models.where(ModelMetadata.owner_id == user.id)
    scoped = sessions.subquery()
    completed = scoped.c.status == SessionStatus.COMPLETED.value
    row = db.session.execute(select(
        func.count(),
        func.sum(case((scoped.c.status.in_(ACTIVE_STATUSES), 1), else_=0)),
        func.sum(case((completed, 1), else_=0)),
        func.sum(case((scoped.c.status == SessionStatus.FAILED.value, 1), else_=0)),
        func.avg(case((completed, scoped.c.size_reduction_percent))),
        func.avg(case((completed, scoped.c.speed_improvement_percent))),
    ).select_from(scoped)).one()
    return {
        "total_models": db.session.scalar(select(func.count()).select_from(models.subquery())) or 0,
        "active_optimizations": int(row[1] or 0),
        "completed_optimizations": int(row[2] or 0),
        "failed_optimizations": int(row[3] or 0),
        "average_size_reduction": round(float(row[4] or 0.0), 2),
        "average_speed_improvement": round(float(row[5] or 0.0), 2),
        "total_sessions": int(row[0] or 0),
        "last_updated": datetime.now(UTC),
    }
