"""A session's run, as the executor drives it: claim it, give a worker its job, record
what the worker reports (progress, timeline, the outcome) and publish each change."""

from __future__ import annotations

import logging
from collections.abc import Set
from datetime import timedelta
from pathlib import Path
from typing import cast

from flask import current_app
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import aliased
from sqlalchemy.orm.exc import UnmappedInstanceError

from ..extensions import db
from ..tables import OptimizationSession, SessionCandidate, SessionEvent, SessionStatus, utcnow
from . import (
    alerts,
    artifacts,
    caching,
    get,
    metrics,
    model_store,
    search_front,
    session_summaries,
    stored_files,
)

log = logging.getLogger("optideck.sessions")


def claim_next(per_user: int) -> OptimizationSession | None:
    """Take the oldest queued session whose owner runs fewer than `per_user` sessions;
    several dispatchers never take the same one."""
    busy_owners = (
        select(OptimizationSession.owner_id)
        .where(
            OptimizationSession.status == SessionStatus.RUNNING.value,
            OptimizationSession.owner_id.is_not(None),
        )
        .group_by(OptimizationSession.owner_id)
        .having(func.count() >= per_user)
    )
    while True:
        candidate = db.session.scalar(
            select(OptimizationSession.id)
            .where(
                OptimizationSession.status == SessionStatus.QUEUED.value,
                OptimizationSession.owner_id.is_(None) | OptimizationSession.owner_id.not_in(busy_owners),
            )
            .order_by(OptimizationSession.created_at, OptimizationSession.id)
            .limit(1)
        )
        if candidate is None:
            return None
        session = _take(candidate)
        if session is not None:
            return session


def claim(session_id: int, per_user: int) -> OptimizationSession | None:
    """Take this queued session (a work queue's task names it) if its owner runs fewer
    than `per_user` sessions; of several processes asking at once, one wins."""
    # Aliases: inside an UPDATE of the same table, a plain subquery would correlate with
    # the row being updated.
    others, this = aliased(OptimizationSession), aliased(OptimizationSession)
    owner_running = (
        select(func.count())
        .select_from(others)
        .where(
            others.status == SessionStatus.RUNNING.value,
            others.owner_id == select(this.owner_id).where(this.id == session_id).scalar_subquery(),
        )
        .scalar_subquery()
    )
    return _take(session_id, owner_running < per_user)


def _take(session_id: int, *conditions) -> OptimizationSession | None:
    """Move the session from queued to running if it still is queued (and `conditions`
    hold): the UPDATE decides, so of several processes trying, one wins. The winner
    announces it."""
    now = utcnow()
    update_result = db.session.execute(
        update(OptimizationSession)
        .where(
            OptimizationSession.id == session_id,
            OptimizationSession.status == SessionStatus.QUEUED.value,
            *conditions,
        )
        .values(
            status=SessionStatus.RUNNING.value,
            started_at=now,
            updated_at=now,
            heartbeat_at=now,
            current_step="starting",
        )
        .execution_options(synchronize_session=False)
    )
    # An UPDATE's result is a CursorResult, which has the row count; execute() is typed Result.
    won = cast(CursorResult, update_result).rowcount
    db.session.commit()
    if not won:
        return None
    session = db.session.get(OptimizationSession, session_id)
    if session is None:  # gone since the commit: refresh() raises this for a None
        raise UnmappedInstanceError(session)
    db.session.refresh(session)
    add_event(session, "started", None, "A worker took the session.")
    db.session.commit()
    publish("session_started", session)
    return session


def job_for(session: OptimizationSession) -> dict:
    """The session's job for the engine, with the stored files' paths on this server (the
    executor copies them into the worker's sandbox)."""
    model = session.model
    criteria = session.criteria
    eval_path = model_store.eval_path(model)
    if session.started_at is None:  # never, once claimed; the deadline's sum would raise this too
        raise TypeError("the session has not started")
    return {
        "session_id": session.id,
        "model_path": str(model_store.file_path(model)),
        "model_format": model.format,
        "input_specs": model.input_spec,
        "steps": session.plan,
        "criteria": criteria,
        "eval_data_path": str(eval_path) if eval_path else None,
        "latency_seconds": current_app.config["OPTIDECK"]["executor"]["latency_seconds"],
        "task": model.task,
        "deadline": (
            session.started_at + timedelta(minutes=criteria["max_optimization_time_minutes"])
        ).timestamp(),
    }


def _locked(session_id: int) -> OptimizationSession | None:
    """The session, read afresh and locked until the commit (on PostgreSQL): a worker's
    report and another process's sweep of the same session happen one after the other, so
    it is finished once, with one event."""
    return db.session.get(OptimizationSession, session_id, with_for_update=True, populate_existing=True)


def _running(session_id: int) -> OptimizationSession | None:
    session = _locked(session_id)
    if session is None or session.status != SessionStatus.RUNNING.value:
        return None
    return session


def record_progress(session_id: int, pct: float, step: str) -> None:
    session = _running(session_id)
    if session is None:
        return
    now = utcnow()
    # Progress only moves forward, whatever order messages arrive in.
    session.progress = max(session.progress, min(float(pct), 100.0))
    session.current_step = step
    session.updated_at = session.heartbeat_at = now
    if session.started_at and session.progress >= 5:
        elapsed = now - session.started_at
        session.estimated_completion_at = now + elapsed * ((100 - session.progress) / session.progress)
    db.session.commit()
    publish("session_progress", session)


def record_event(session_id: int, kind: str, step: str | None, message: str, data: dict) -> None:
    session = _running(session_id)
    if session is None:
        return
    add_event(session, kind, step, message, data)
    session.updated_at = utcnow()
    db.session.commit()
    metrics.step_ended(session_id, kind, step)


def record_heartbeat(session_id: int) -> bool:
    """The session's worker is alive (the executor calls this every few seconds). False when
    the session is no longer running: another process ended it (a sweep that judged its
    worker lost), and its worker must stop."""
    session = _running(session_id)
    if session is None:
        db.session.commit()  # the row lock
        return False
    session.heartbeat_at = utcnow()
    db.session.commit()
    return True


def record_completed(
    session_id: int, outcome: dict, artifact: Path, candidates: dict[int, Path] | None = None
) -> None:
    """Finish a session with the worker's results and its artifact (and a search's kept
    candidates), files the executor took out of the sandbox; each is checked here before
    it reaches storage."""
    session = _running(session_id)
    candidates = candidates or {}
    try:
        if session is None:
            return
        try:
            # The figures first (cheap, and they say which files there should be), then
            # every file in one sandboxed check; sizes are the copies' on this side.
            sizes = {index: path.stat().st_size for index, path in candidates.items()}
            search = search_front.is_search(session)
            results = artifacts.results(
                outcome, session.model.size_bytes, artifact.stat().st_size, sizes, search
            )
            checked = artifacts.check_all(
                {"model_path": artifact, **{f"candidate_{i}_path": p for i, p in candidates.items()}}
            )
        except artifacts.Refused as exc:
            log.warning("session %s: artifact refused: %s", session_id, exc)
            record_failed(session_id, "worker_lost", f"The worker's optimized model was refused: {exc}")
            return
        sha, size = checked["model_path"]
        stored_files.keep(artifact, sha, size)
        session.artifact_sha256, session.artifact_size_bytes = sha, size
        for index, path in candidates.items():
            candidate_sha, candidate_size = checked[f"candidate_{index}_path"]
            stored_files.keep(path, candidate_sha, candidate_size)
            db.session.add(
                SessionCandidate(
                    session_id=session.id,
                    candidate_index=index,
                    sha256=candidate_sha,
                    size_bytes=candidate_size,
                )
            )
        _finish_completed(session, results)
    finally:
        artifact.unlink(missing_ok=True)
        for path in candidates.values():
            path.unlink(missing_ok=True)


def _finish_completed(session: OptimizationSession, results: dict) -> None:
    session.results = results
    session.size_reduction_percent = results["size_reduction_percent"]
    session.speed_improvement_percent = results["speed_improvement_percent"]
    _finish(session, SessionStatus.COMPLETED, utcnow())
    met = "criteria met" if results["criteria_met"] else "criteria NOT met"
    add_event(
        session,
        "completed",
        None,
        (
            f"Done: {results['size_reduction_percent']:.1f} % smaller, "
            f"{results['speedup']:.2f}x speed, "
            f"{results['accuracy_retention_percent']:.2f} % accuracy retention; {met}."
        ),
    )
    db.session.commit()
    publish("session_completed", session)


def record_failed(session_id: int, error_type: str, message: str) -> None:
    session = _locked(session_id)
    if session is None or session.is_finished:
        return
    session.error_type, session.error_message = error_type, message
    _finish(session, SessionStatus.FAILED, utcnow())
    add_event(session, "failed", session.current_step, f"Failed ({error_type}): {message}")
    db.session.commit()
    publish("session_failed", session)


def record_cancelled(session_id: int) -> None:
    session = _locked(session_id)
    if session is None or session.is_finished:
        return
    _finish(session, SessionStatus.CANCELLED, utcnow())
    add_event(session, "cancelled", session.current_step, "Cancelled; the worker stopped.")
    db.session.commit()
    publish("session_cancelled", session)


def fail_stale(heartbeat_timeout: float, except_ids: Set[int] = frozenset()) -> list[int]:
    """Fail running sessions whose worker stopped reporting (a crash, a restart)."""
    cutoff = utcnow() - timedelta(seconds=heartbeat_timeout)
    stale = db.session.scalars(
        select(OptimizationSession.id).where(
            OptimizationSession.status == SessionStatus.RUNNING.value,
            (OptimizationSession.heartbeat_at.is_(None)) | (OptimizationSession.heartbeat_at < cutoff),
        )
    ).all()
    lost = []
    for session_id in stale:
        if session_id in except_ids:
            continue
        # Judged again under the row's lock: its worker may have reported since the query.
        session = _running(session_id)
        if session is None or (session.heartbeat_at is not None and session.heartbeat_at >= cutoff):
            db.session.commit()  # the row lock
            continue
        record_failed(
            session_id, "worker_lost", f"The worker stopped reporting for more than {heartbeat_timeout:g} s."
        )
        lost.append(session_id)
    return lost


def cancel_requests(session_ids: list[int]) -> set[int]:
    if not session_ids:
        return set()
    return set(
        db.session.scalars(
            select(OptimizationSession.id).where(
                OptimizationSession.id.in_(session_ids), OptimizationSession.cancel_requested_at.is_not(None)
            )
        )
    )


def _finish(session: OptimizationSession, status: SessionStatus, now) -> None:
    session.status = status.value
    session.completed_at = session.updated_at = now
    session.estimated_completion_at = None
    if status == SessionStatus.COMPLETED:
        session.progress = 100.0
        session.current_step = "done"


def add_event(session, kind: str, step: str | None, message: str, data: dict | None = None) -> None:
    db.session.add(
        SessionEvent(
            session_id=session.id, kind=kind, step=step, progress=session.progress, message=message, data=data
        )
    )


def publish(event: str, session: OptimizationSession) -> None:
    data = session_summaries.jsonable(session_summaries.summary(session))
    get("notifications").publish(event, data, session.owner_id)
    if event == "session_progress":  # progress changes no count, average or load
        return
    caching.invalidate()
    get("status").publish_if_changed()
    if event == "session_failed":
        alerts.session_failed(session)
