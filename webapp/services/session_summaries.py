"""Optimization sessions as users see them: the summary the API, the pages and live events
all show, and the session page's context (the page and its live fragment render one)."""

from __future__ import annotations

from ..engine.search import AUTO, describe
from ..extensions import db
from ..tables import ModelMetadata, OptimizationSession, User
from . import policy, search_front


def summary(session: OptimizationSession) -> dict:
    """The session as users see it (the README's JSON API): the API, the pages and live events
    all use this."""
    model = session.model
    return _summary(
        session,
        model.name if model is not None else None,
        model is None or model.deleted_at is not None,
        session.owner.username if session.owner else None,
    )


def summaries(query) -> list[dict]:
    """summary() of each session `query` selects, read as plain columns: for lists, where
    loading 50 whole sessions (criteria, plan and all) cost more than the rest together."""
    rows = db.session.execute(
        query.with_only_columns(
            *(getattr(OptimizationSession, name) for name in SUMMARY_COLUMNS),
            ModelMetadata.name.label("model_name"),
            ModelMetadata.deleted_at.label("model_deleted_at"),
            ModelMetadata.id.label("model_found"),
            User.username.label("owner_name"),
        )
        .outerjoin(ModelMetadata, ModelMetadata.id == OptimizationSession.model_id)
        .outerjoin(User, User.id == OptimizationSession.owner_id)
    )
    return [
        _summary(
            row, row.model_name, row.model_found is None or row.model_deleted_at is not None, row.owner_name
        )
        for row in rows
    ]


SUMMARY_COLUMNS = (
    "id",
    "model_id",
    "status",
    "progress",
    "current_step",
    "techniques",
    "parameters",
    "results",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "estimated_completion_at",
    "error_type",
    "error_message",
)


def _summary(s, model_name: str | None, model_deleted: bool, owner: str | None) -> dict:
    """`s` is a session, or a row with its SUMMARY_COLUMNS."""
    results = s.results or {}
    return {
        "session_id": s.id,
        "model_id": s.model_id,
        "model_name": model_name,
        "model_deleted": model_deleted,
        "owner": owner,
        "status": s.status,
        "progress_percentage": round(s.progress, 1),
        "current_step": s.current_step,
        "techniques": s.techniques,
        "applied": applied(s.techniques, s.parameters, results),
        "size_reduction_percent": results.get("size_reduction_percent"),
        "speed_improvement_percent": results.get("speed_improvement_percent"),
        "speedup": results.get("speedup"),
        "speedup_low": results.get("speedup_low"),
        "speedup_high": results.get("speedup_high"),
        "accuracy_retention_percent": results.get("accuracy_retention_percent"),
        "criteria_met": results.get("criteria_met"),
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "started_at": s.started_at,
        "completed_at": s.completed_at,
        "estimated_completion_at": s.estimated_completion_at,
        "error_type": s.error_type,
        "error_message": s.error_message,
    }


OUTCOME_WORDS = {
    "kept": "",
    "kept_despite_violation": " (kept despite the criteria)",
    "rolled_back": " (rolled back)",
    "failed": " (failed)",
    "skipped": " (skipped)",
}


def applied(techniques: list[str], parameters: dict | None, results: dict) -> str:
    """What a session did, in words: the steps it kept, those rolled back marked so, or a
    search's chosen candidate; before it finishes, what it was asked to do."""
    if results.get("candidates") and results.get("chosen") is not None:
        chosen = results["candidates"][results["chosen"]]
        return f"search: {chosen.get('configuration') or 'candidate ' + str(results['chosen'])}"
    if techniques == [AUTO]:
        return "search"
    steps = results.get("steps")
    if steps:
        return "; ".join(describe(step) + OUTCOME_WORDS.get(str(step.get("outcome")), "") for step in steps)
    if "steps" in results:
        return "nothing applied"
    parameters = parameters or {}
    return "; ".join(describe({"technique": t, "params": parameters.get(t)}) for t in techniques)


def jsonable(data: dict) -> dict:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in data.items()}


# What the session page's before-and-after table reads. A run stores them all; results
# without them (written by hand, or by an older version) get a short panel, not a 500.
REPORT_FIELDS = (
    "original_size_bytes",
    "optimized_size_bytes",
    "size_reduction_percent",
    "original_latency_ms",
    "optimized_latency_ms",
    "speedup",
    "accuracy_before",
    "accuracy_after",
    "accuracy_retention_percent",
    "criteria_met",
)


def missing_report_fields(results: dict) -> list[str]:
    return [name for name in REPORT_FIELDS if results.get(name) is None]


def page_context(user: User, session: OptimizationSession) -> dict:
    """What templates/sessions/detail.html and its live fragment render."""
    results = session.results or {}
    return {
        "session": session,
        "s": summary(session),
        "events": list(session.events),
        "results": results,
        "report_missing": missing_report_fields(results) if results else [],
        "search": search_front.front(session),
        "can_change": policy.can_change(user, session.owner_id),
    }
