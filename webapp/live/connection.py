"""What both WebSocket endpoints share: origin checks, the send loop, shutdown."""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from flask import current_app, request

from ..models import User
from ..services import get, visibility
from ..services.notifications import Notification

log = logging.getLogger("optideck.live")

# The htmx ws extension reconnects only after 1006, 1012 and 1013: a server
# going away says 1012 ("service restart") so pages come back by themselves.
SERVICE_RESTART = 1012
POLICY_VIOLATION = 1008
RECEIVE_SECONDS = 0.5

_shutting_down = threading.Event()


def shutting_down() -> bool:
    return _shutting_down.is_set()


def begin_shutdown() -> None:
    _shutting_down.set()


def origin_allowed() -> bool:
    """Only this site's pages (and configured origins) may open a socket with our cookie."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: scripts authenticate with a token anyway
    allowed = {request.host_url.rstrip("/"), *current_app.config["OPTIDECK"]["cors"]["origins"]}
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" in allowed


def may_see(user: User, notification: Notification, rooms: set[int] | None) -> bool:
    """Session events go to those who may see the session (and joined its room, if any);
    platform-wide events (no owner) to everyone."""
    session_id = notification.data.get("session_id")
    if rooms is not None and session_id is not None and session_id not in rooms:
        return False
    if notification.owner_id is None:
        return True
    return visibility.can_see(user, notification.owner_id)


def subscribe():
    return get("notifications").subscribe()


def drain_latest(subscription, first: Notification) -> list[Notification]:
    """The next batch of events, keeping only the newest progress of each session:
    a slow client catches up on the state, not on every step it missed."""
    batch = [first]
    while True:
        more = subscription.get(timeout=0)
        if more is None:
            break
        batch.append(more)
    latest_progress = {}
    for index, item in enumerate(batch):
        if item.event == "session_progress":
            latest_progress[item.data.get("session_id")] = index
    return [item for index, item in enumerate(batch)
            if item.event != "session_progress"
            or latest_progress.get(item.data.get("session_id")) == index]
