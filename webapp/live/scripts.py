"""`/api/v1/ws`: JSON events for scripts, authenticated with a bearer token."""

from __future__ import annotations

import json

from flask import request

from ..auth import tokens
from ..extensions import sock
from ..services import optimization, system_status
from ..services.notifications import Notification
from .connection import (
    EVENT_FOR_STATUS,
    LiveStream,
    changed_sessions,
    may_see,
    origin_allowed,
    refuse,
    since_param,
)

AUTH_WAIT_SECONDS = 10


def message(event: str, data: dict) -> str:
    return Notification(event, data, None).json


def error(code: str, text: str) -> str:
    return message("error", {"error": code, "message": text})


def _authenticate(ws):
    """The user behind the Authorization header, or the first message's token."""
    header = request.headers.get("Authorization")
    if not header:
        first = ws.receive(timeout=AUTH_WAIT_SECONDS)
        try:
            data = json.loads(first or "")
        except json.JSONDecodeError:
            data = {}
        if isinstance(data, dict) and data.get("action") == "auth":
            header = f"Bearer {data.get('token', '')}"
    try:
        user, _ = tokens.authenticate(header)
    except tokens.TokenRejected as exc:
        ws.send(error(exc.code, exc.message))
        refuse(ws, "api", exc.code)
        return None
    return user


class EventStream(LiveStream):
    endpoint = "api"

    def __init__(self, ws, user, since):
        super().__init__(ws, user, since)
        self.rooms: set[int] | None = None  # None: every session the user may see

    def snapshot(self) -> list[str]:
        """The state from the database: the load, then every active session and every
        session changed since the client was last up to date."""
        out = [message("system_status", system_status.current())]
        for session in changed_sessions(self.user, self.since, active=True):
            if self.rooms is None or session.id in self.rooms:
                out.append(message(EVENT_FOR_STATUS[session.status],
                                   optimization.jsonable(optimization.summary(session))))
        return out

    def resync(self) -> list[str]:
        return [message("resync", {"reason": "the client fell behind"}), *self.snapshot()]

    def accepts(self, notification: Notification) -> bool:
        return may_see(self.user, notification, self.rooms)

    def deliver(self, batch: list[Notification]) -> list[str]:
        return [n.json for n in batch]

    def on_message(self, text: str) -> list[str]:
        """subscribe / unsubscribe narrow the stream to chosen sessions."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return [error("validation_error", "Messages are JSON objects.")]
        action = data.get("action") if isinstance(data, dict) else None
        session_id = data.get("session_id") if isinstance(data, dict) else None
        if action not in ("subscribe", "unsubscribe"):
            return [error("validation_error",
                          "Actions: subscribe, unsubscribe (with session_id).")]
        if not isinstance(session_id, int) or isinstance(session_id, bool):
            return [error("validation_error", "session_id must be a number.")]
        if action == "subscribe":
            self.rooms = (self.rooms or set()) | {session_id}
        else:
            self.rooms = ((self.rooms or set()) - {session_id}) or None
        return []


@sock.route("/api/v1/ws")
def events(ws):
    """Stream JSON events; see the README's "Live events"."""
    if not origin_allowed():
        refuse(ws, "api", "origin not allowed")
        return
    user = _authenticate(ws)
    if user is None:
        return
    EventStream(ws, user, since_param()).run()
