"""Optimization sessions as users ask for them: start, find, cancel, download.

A session's run is services/session_runs.py (the executor's side); how a session looks
to users is services/session_summaries.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

from sqlalchemy import CursorResult, select, update

from ..bounds import file_stem
from ..engine.planner import PlanError, build_plan
from ..engine.search import describe
from ..extensions import db
from ..tables import (
    ModelMetadata,
    OptimizationSession,
    SessionCandidate,
    SessionEvent,
    SessionStatus,
    User,
    utcnow,
)
from . import audit, caching, get, policy, session_runs
from . import criteria as criteria_service
from .errors import ServiceError


def current_criteria() -> dict:
    """The optimization criteria new sessions start with (a copy: sessions freeze it)."""
    in_force = criteria_service.current()
    return {**copy.deepcopy(in_force.document), "version": in_force.version}


def start(
    user: User, model_id: int, techniques: list[str], parameters: dict, budget_minutes: float | None = None
) -> OptimizationSession:
    """Queue a session of the given techniques, or a search (techniques ["auto"])."""
    model = db.session.get(ModelMetadata, model_id)
    if model is None or not policy.can_see(user, model.owner_id):
        raise ServiceError(404, "not_found", f"No model {model_id}.", {"model_id": [f"No model {model_id}."]})
    if model.deleted_at is not None:
        raise ServiceError(
            409, "model_deleted", f"Model {model_id} was deleted.", {"model_id": ["The model was deleted."]}
        )
    if not policy.can_change(user, model.owner_id):
        audit.deny("session.start", user, resource=f"model:{model.id}")
    criteria = current_criteria()
    try:
        plan = build_plan(
            model.format,
            techniques,
            parameters,
            criteria,
            has_eval_data=model.eval_data_sha256 is not None,
            budget_minutes=budget_minutes,
        )
    except PlanError as exc:
        raise ServiceError(
            422 if exc.unprocessable else 400,
            "unprocessable" if exc.unprocessable else "validation_error",
            exc.message,
            exc.details,
        ) from exc
    session = OptimizationSession(
        model_id=model.id,
        owner_id=user.id,
        status=SessionStatus.QUEUED.value,
        techniques=[step["technique"] for step in plan],
        parameters={step["technique"]: step["params"] for step in plan},
        criteria=criteria,
        plan=plan,
        criteria_version=criteria["version"],
    )
    db.session.add(session)
    db.session.flush()
    session_runs.add_event(session, "queued", None, f"Queued with plan: {_plan_text(plan)}")
    audit.record(
        "session.start",
        user=user,
        resource=f"session:{session.id}",
        detail=f"model:{model.id} {session.techniques}",
        commit=False,
    )
    db.session.commit()
    # Open lists and dashboards show a queued session before any worker takes it.
    session_runs.publish("session_progress", session)
    caching.invalidate()
    get("status").publish_if_changed()
    # After the commit: a worker that takes the session at once must find it.
    get("executor").submit(session.id)
    return session


def unavailable_choices(model: ModelMetadata | None, offered, criteria: dict) -> dict[tuple, dict[str, str]]:
    """Parameter choices `model` cannot take, as {(technique id, param): {choice: why}}.
    Today that is what calibrates on evaluation data (int8 static) for a model uploaded
    without any."""
    if model is None or model.eval_data_sha256:
        return {}
    found: dict[tuple, dict[str, str]] = {}
    for technique in offered:
        defaults = technique.criteria_defaults(criteria)
        for param in technique.form_params:
            for choice, _ in param.choices:
                if technique.needs_data({**defaults, param.name: choice}) == param.name:
                    found.setdefault((technique.id, param), {})[choice] = (
                        f"{choice.replace('_', ' ')} calibrates on evaluation data, and {model.name} "
                        f"v{model.version} has none: upload the model again with an .npz to use it."
                    )
    return found


def _plan_text(plan: list[dict]) -> str:
    return ", then ".join(describe(step) for step in plan)


def query_for(user: User):
    return policy.scope(select(OptimizationSession), OptimizationSession.owner_id, user)


def for_model(user: User, model_id: int, limit: int = 50) -> list[OptimizationSession]:
    query = query_for(user).where(OptimizationSession.model_id == model_id)
    return list(
        db.session.scalars(
            query.order_by(OptimizationSession.created_at.desc(), OptimizationSession.id.desc()).limit(limit)
        )
    )


def get_for(user: User, session_id: int) -> OptimizationSession:
    """The session if this user may see it; 404 alike for missing and not theirs."""
    session = db.session.get(OptimizationSession, session_id)
    if session is None or not policy.can_see(user, session.owner_id):
        raise ServiceError(404, "not_found", f"No session {session_id}.")
    return session


def cancel(session: OptimizationSession, by: User) -> OptimizationSession:
    if not policy.can_change(by, session.owner_id):
        audit.deny("session.cancel", by, resource=f"session:{session.id}")
    if session.is_finished:
        raise ServiceError(
            409, "conflict", f"Session {session.id} is already {session.status}; nothing to cancel."
        )
    now = utcnow()
    # Queued: cancelled here and now, unless a worker claimed it meanwhile.
    update_result = db.session.execute(
        update(OptimizationSession)
        .where(OptimizationSession.id == session.id, OptimizationSession.status == SessionStatus.QUEUED.value)
        .values(
            status=SessionStatus.CANCELLED.value, completed_at=now, updated_at=now, cancel_requested_at=now
        )
    )
    # An UPDATE's result is a CursorResult, which has the row count; execute() is typed Result.
    claimed = cast(CursorResult, update_result).rowcount
    if not claimed:
        # Running: the executor stops the worker within its grace period.
        session.cancel_requested_at = now
    audit.record("session.cancel", user=by, resource=f"session:{session.id}", commit=False)
    db.session.commit()
    db.session.refresh(session)
    if claimed:
        session_runs.add_event(session, "cancelled", None, f"Cancelled by {by.username} before it started.")
        db.session.commit()
        session_runs.publish("session_cancelled", session)
    else:
        get("executor").wake()
    return session


def events(session: OptimizationSession) -> list[SessionEvent]:
    return list(session.events)


def artifact_path(session: OptimizationSession, candidate: int | None = None) -> Path:
    """The optimized model's file; for a search, `candidate` picks any kept candidate
    (without it, the chosen one)."""
    if session.status != SessionStatus.COMPLETED.value or not session.artifact_sha256:
        raise ServiceError(
            404, "not_found", f"Session {session.id} has no optimized model ({session.status})."
        )
    sha256 = session.artifact_sha256
    if candidate is not None:
        kept = db.session.scalar(
            select(SessionCandidate.sha256).where(
                SessionCandidate.session_id == session.id, SessionCandidate.candidate_index == candidate
            )
        )
        if kept is None:
            raise ServiceError(
                404,
                "not_found",
                f"Session {session.id} kept no candidate {candidate}.",
                {"candidate": ["Only the candidates on the front (and the chosen one) are kept."]},
            )
        sha256 = kept
    try:
        return get("blobs").local_copy(sha256)
    except FileNotFoundError:
        raise ServiceError(404, "not_found", "The optimized model file is missing from storage.") from None


def artifact_download_name(session: OptimizationSession, candidate: int | None = None) -> str:
    """The file name the optimized model downloads as. Built from the model's name, which in
    rows older than the upload check may hold anything, even a line break."""
    which = "optimized" if candidate is None else f"candidate{candidate}"
    return f"{file_stem(session.model.name)}-session{session.id}-{which}.onnx"
