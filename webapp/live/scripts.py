"""`/api/v1/ws`: JSON events for scripts, authenticated with a bearer token."""

from __future__ import annotations

import json
import logging

from flask import request
from sqlalchemy import select

from ..auth import tokens
from ..extensions import db, sock
from ..models import ACTIVE_STATUSES, OptimizationSession, SessionStatus
from ..services import get, optimization
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

log = logging.getLogger("optideck.live")
AUTH_WAIT_SECONDS = 10


def _send(ws, event: str, data: dict, timestamp: str | None = None) -> None:
    from datetime import UTC, datetime

    stamp = timestamp or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    ws.send(json.dumps({"event": event, "data": data, "timestamp": stamp}, default=str))


def _authenticate(ws):
    """The user behind the Authorization header, or the first message's token."""
    header = request.headers.get("Authorization")
    if not header:
        first = ws.receive(timeout=AUTH_WAIT_SECONDS)
        try:
            message = json.loads(first or "")
        except json.JSONDecodeError:
            message = {}
        if isinstance(message, dict) and message.get("action") == "auth":
            header = f"Bearer {message.get('token', '')}"
    try:
        user, _ = tokens.authenticate(header)
    except tokens.TokenRejected as exc:
        _send(ws, "error", {"error": exc.code, "message": exc.message})
        ws.close(POLICY_VIOLATION, exc.code)
        return None
    return user


def system_status() -> dict:
    queued = db.session.scalar(select(db.func.count()).select_from(OptimizationSession).where(
        OptimizationSession.status == SessionStatus.QUEUED.value)) or 0
    return {**get("executor").status(), "queued": queued}


def snapshot(ws, user, rooms) -> None:
    """The state from the database: what a (re)connecting client must not miss."""
    _send(ws, "system_status", system_status())
    active = db.session.scalars(optimization.query_for(user).where(
        OptimizationSession.status.in_(ACTIVE_STATUSES)))
    for session in active:
        if rooms is None or session.id in rooms:
            _send(ws, "session_progress", optimization.jsonable(optimization.summary(session)))
    db.session.remove()


def _handle(ws, message: str, rooms):
    """subscribe / unsubscribe narrow the stream to chosen sessions; returns the new rooms."""
    try:
        data = json.loads(message)
    except json.JSONDecodeError:
        _send(ws, "error", {"error": "validation_error", "message": "Messages are JSON objects."})
        return rooms
    action = data.get("action") if isinstance(data, dict) else None
    session_id = data.get("session_id") if isinstance(data, dict) else None
    if action in ("subscribe", "unsubscribe") and not isinstance(session_id, int):
        _send(ws, "error", {"error": "validation_error", "message": "session_id must be a number."})
        return rooms
    if action == "subscribe":
        return (rooms or set()) | {session_id}
    if action == "unsubscribe":
        remaining = (rooms or set()) - {session_id}
        return remaining or None
    _send(ws, "error", {"error": "validation_error",
                        "message": "Actions: subscribe, unsubscribe (with session_id)."})
    return rooms


@sock.route("/api/v1/ws")
def events(ws):
    """Stream JSON events; see the README's "Live events"."""
    if not origin_allowed():
        ws.close(POLICY_VIOLATION, "origin not allowed")
        return
    user = _authenticate(ws)
    if user is None:
        return
    rooms: set[int] | None = None
    with subscribe() as subscription:
        snapshot(ws, user, rooms)
        while not shutting_down():
            message = ws.receive(timeout=0)
            if message is not None:
                rooms = _handle(ws, message, rooms)
                continue
            first = subscription.get(timeout=RECEIVE_SECONDS)
            if subscription.dropped:
                # Fell behind and lost events: start again from the database.
                subscription.dropped = 0
                _send(ws, "resync", {"reason": "the client fell behind"})
                snapshot(ws, user, rooms)
                continue
            if first is None:
                continue
            for notification in drain_latest(subscription, first):
                if may_see(user, notification, rooms):
                    _send(ws, notification.event, notification.data, notification.timestamp)
        ws.close(SERVICE_RESTART, "server restarting")
