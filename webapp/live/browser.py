"""`/ws`: out-of-band HTML fragments for the pages, over the browser's session cookie.

Each fragment is rendered from the partial its page renders, so a row pushed
live is the row a reload would show.
"""

from __future__ import annotations

from datetime import datetime

from flask import render_template, request
from flask_login import current_user

from ..extensions import db, sock
from ..models import OptimizationSession, User
from ..services import dashboard, optimization, visibility
from ..services.errors import ServiceError
from .connection import (
    POLICY_VIOLATION,
    RECEIVE_SECONDS,
    SERVICE_RESTART,
    drain_latest,
    may_see,
    origin_allowed,
    shutting_down,
    subscribe,
)

PAGES = ("session", "sessions", "dashboard", "other")
TOAST_EVENTS = {"session_completed": "completed", "session_failed": "failed"}


def _session_fragment(user: User, session: OptimizationSession) -> str:
    return render_template(
        "sessions/_live.html", oob=True, session=session, s=optimization.summary(session),
        events=optimization.events(session), results=session.results or {},
        can_change=visibility.can_change(user, session.owner_id))


def _row_fragment(user: User, session: OptimizationSession) -> str:
    # A bare <tr> outside a table is dropped by the HTML parser; <template> keeps it.
    row = render_template("sessions/_row.html", oob=True, s=optimization.summary(session),
                          show_owner=visibility.sees_everything(user))
    return f"<template>{row}</template>"


def _dashboard_fragment(user: User) -> str:
    lists = dashboard.safely(dashboard.active_and_recent, user)
    return render_template("dashboard/_live.html", oob=True, stats=dashboard.cached_stats(user),
                           active=lists[0] if lists else [])


def _toast(session: OptimizationSession, event: str) -> str:
    outcome = TOAST_EVENTS[event]
    return render_template("_toast.html", session_id=session.id, outcome=outcome,
                           model=session.model.name if session.model else "a model")


def fragments(user: User, page: str, room: int | None, session_ids: list[int],
              events: list[str]) -> str:
    parts = []
    for session_id, event in zip(session_ids, events, strict=True):
        session = db.session.get(OptimizationSession, session_id)
        if session is None or not visibility.can_see(user, session.owner_id):
            continue
        if page == "session" and session.id == room:
            parts.append(_session_fragment(user, session))
        elif page == "sessions":
            parts.append(_row_fragment(user, session))
        if event in TOAST_EVENTS and session.owner_id == user.id:
            parts.append(_toast(session, event))
    if page == "dashboard" and session_ids:
        parts.append(_dashboard_fragment(user))
    db.session.remove()
    return "".join(parts)


def _since() -> datetime | None:
    try:
        return datetime.fromisoformat(request.args.get("since", ""))
    except ValueError:
        return None


def _snapshot(user: User, page: str, room: int | None) -> str:
    """Everything that changed since the page was rendered (or, for a session page, its state)."""
    if page == "session" and room is not None:
        ids = [room]
    else:
        since = _since()
        if since is None:
            return ""
        ids = list(db.session.scalars(optimization.query_for(user).with_only_columns(
            OptimizationSession.id).where(OptimizationSession.updated_at >= since)))
    return fragments(user, page, room, ids, ["snapshot"] * len(ids))


@sock.route("/ws")
def browser_updates(ws):
    if not origin_allowed() or not current_user.is_authenticated:
        ws.close(POLICY_VIOLATION, "not allowed")
        return
    user = current_user._get_current_object()
    page = request.args.get("page", "other")
    page = page if page in PAGES else "other"
    room = None
    if page == "session":
        try:
            room = optimization.get_for(user, int(request.args.get("session", ""))).id
        except (ValueError, ServiceError):
            ws.close(POLICY_VIOLATION, "no such session")
            return
    with subscribe() as subscription:
        first_state = _snapshot(user, page, room)
        if first_state:
            ws.send(first_state)
        while not shutting_down():
            ws.receive(timeout=0)  # browsers send nothing we act on; this notices a close
            first = subscription.get(timeout=RECEIVE_SECONDS)
            if subscription.dropped:
                # Fell behind and lost events: send the state again from the database.
                subscription.dropped = 0
                resync = _snapshot(user, page, room)
                if resync:
                    ws.send(resync)
                continue
            if first is None:
                continue
            batch = [n for n in drain_latest(subscription, first)
                     if n.data.get("session_id") is not None and may_see(user, n, None)]
            html = fragments(user, page, room, [n.data["session_id"] for n in batch],
                             [n.event for n in batch])
            if html:
                ws.send(html)
        ws.close(SERVICE_RESTART, "server restarting")
