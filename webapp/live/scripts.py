"""`/api/v1/ws`: JSON events for scripts, authenticated with a bearer token."""

from __future__ import annotations

import json
import time

from flask import current_app, request

from ..bounds import MAX_ID, parse_json
from ..services import session_summaries, system_status, tokens
from ..services.notifications import Notification
from .admission import Refused
from .connection import (
    EVENT_FOR_STATUS,
    SERVICE_RESTART,
    LiveStream,
    changed_sessions,
    live_route,
    may_see,
    shutting_down,
    since_param,
)

# How often a socket waiting for its first message looks whether the server is stopping.
SHUTDOWN_CHECK_SECONDS = 0.25
# Sessions one stream may follow by name: each subscribe copies the set (the publisher
# reads it from its thread), and unbounded, a client could make every copy costly.
MAX_ROOMS = 1000


def message(event: str, data: dict) -> str:
    return Notification(event, data, None).json


def error(code: str, text: str) -> str:
    return message("error", {"error": code, "message": text})


def _first_message(ws) -> str | None:
    """The client's first message, if it comes within live.auth_timeout_seconds: until
    then the socket holds a server thread for a stranger, so it gets only a few seconds."""
    deadline = time.monotonic() + current_app.config["OPTIDECK"]["live"]["auth_timeout_seconds"]
    while (left := deadline - time.monotonic()) > 0:
        if shutting_down():
            raise Refused("server restarting", SERVICE_RESTART)
        text = ws.receive(timeout=min(left, SHUTDOWN_CHECK_SECONDS))
        if text is not None:
            return text
    return None


def _authenticate(ws):
    """The user and token behind the Authorization header, or the first message's token."""
    header = request.headers.get("Authorization")
    if not header:
        first = _first_message(ws)
        if first is None:
            seconds = current_app.config["OPTIDECK"]["live"]["auth_timeout_seconds"]
            ws.send(
                error(
                    "token_missing",
                    f"Authenticate within {seconds:g} seconds: send "
                    '\'Authorization: Bearer <token>\' or {"action": "auth", ...} first.',
                )
            )
            raise Refused("authentication timed out")
        try:
            data = parse_json(first or "")
        except json.JSONDecodeError:
            data = {}
        if isinstance(data, dict) and data.get("action") == "auth":
            header = f"Bearer {data.get('token', '')}"
    try:
        return tokens.authenticate(header)
    except tokens.TokenRejected as exc:
        ws.send(error(exc.code, exc.message))
        raise Refused(exc.code) from None


class EventStream(LiveStream):
    endpoint = "api"
    takes_frames = True  # every accepted event goes out as it is (deliver)

    def __init__(self, ws, user, token, since):
        super().__init__(ws, user, since)
        self.token_id = token.id
        # Refreshing a token gives its record a new hash: the stream opened with the old
        # access token ends with it, like every request that would send it.
        self.token_hash = token.token_hash
        self.rooms: set[int] | None = None  # None: every session the user may see

    def snapshot(self) -> list[str]:
        """The state from the database: the load, then every active session and every
        session changed since the client was last up to date."""
        out = [message("system_status", system_status.current())]
        for session in changed_sessions(self.user, self.since, active=True):
            if self.rooms is None or session.id in self.rooms:
                out.append(
                    message(
                        EVENT_FOR_STATUS[session.status],
                        session_summaries.jsonable(session_summaries.summary(session)),
                    )
                )
        return out

    def resync(self, reason: str) -> list[str]:
        return [message("resync", {"reason": reason}), *self.snapshot()]

    def review(self, account, token, now) -> None:
        super().review(account, token, now)
        if token is None or token.revoked_at is not None:
            self.end("token_invalid", "The token has been revoked.")
        elif token.token_hash != self.token_hash:
            self.end("token_invalid", "The token was refreshed; reconnect with the new one.")
        elif token.expires_at <= now:
            self.end("token_expired", "The token has expired; refresh it and reconnect.")

    def farewell(self, error_word: str, text: str) -> list[str]:
        return [error(error_word, text)]

    def accepts(self, notification: Notification) -> bool:
        return may_see(self.rights, notification, self.rooms)

    def deliver(self, batch: list[Notification]) -> list[str]:
        # Filtered again: an event queued before a role change is judged by the new role.
        return [n.json for n in batch if self.accepts(n)]

    def on_message(self, text: str) -> list[str]:
        """subscribe / unsubscribe narrow the stream to chosen sessions."""
        try:
            data = parse_json(text)
        except json.JSONDecodeError:
            return [error("validation_error", "Messages are JSON objects.")]
        action = data.get("action") if isinstance(data, dict) else None
        session_id = data.get("session_id") if isinstance(data, dict) else None
        if action not in ("subscribe", "unsubscribe"):
            return [error("validation_error", "Actions: subscribe, unsubscribe (with session_id).")]
        if not isinstance(session_id, int) or isinstance(session_id, bool) or not 1 <= session_id <= MAX_ID:
            return [error("validation_error", f"session_id must be a whole number from 1 to {MAX_ID}.")]
        if action == "subscribe":
            if len(self.rooms or ()) >= MAX_ROOMS and session_id not in (self.rooms or ()):
                return [
                    error(
                        "validation_error",
                        f"A stream follows at most {MAX_ROOMS} sessions; unsubscribe from one first.",
                    )
                ]
            # A new set, not one changed in place: the publisher reads it from its thread.
            self.rooms = (self.rooms or set()) | {session_id}
        else:
            self.rooms = ((self.rooms or set()) - {session_id}) or None
        return []


@live_route("/api/v1/ws", "api", waits_for_auth=lambda: "Authorization" not in request.headers)
def events(ws, ticket):
    """Stream JSON events; see the README's "Live events"."""
    user, token = _authenticate(ws)
    EventStream(ws, user, token, since_param()).run(ticket)
