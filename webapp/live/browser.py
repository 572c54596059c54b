"""`/ws`: out-of-band HTML fragments for the pages, over the browser's session cookie.

Each fragment is rendered from the partial its page renders, so a row pushed
live is the row a reload would show.
"""

from __future__ import annotations

import secrets

from flask import render_template, request
from flask_login import current_user

from ..bounds import parse_id
from ..extensions import db
from ..services import dashboard, optimization, policy, session_summaries, system_status
from ..services.errors import ServiceError
from ..services.notifications import Notification
from ..tables import OptimizationSession, User
from .admission import Refused
from .connection import LiveStream, changed_sessions, live_route, since_param

PAGES = ("session", "sessions", "dashboard", "other")
TOAST_EVENTS = {"session_completed": "completed", "session_failed": "failed"}


def _session_fragment(user: User, session: OptimizationSession) -> str:
    return render_template("sessions/_live.html", oob=True, **session_summaries.page_context(user, session))


def _list_changed() -> str:
    """The sessions page's cue to re-read its list: which sessions belong on it (filters,
    sort, page) is the list query's answer, not the socket's, so one nudge per batch
    re-fetches the page's own URL and new matches appear, leavers go."""
    return render_template("sessions/_changed.html", oob=True)


def _dashboard_fragment(user: User) -> str:
    lists = dashboard.safely(dashboard.active_and_recent, user)
    active, recent = lists if lists is not None else ([], None)
    return render_template(
        "dashboard/_live.html", oob=True, stats=dashboard.cached_stats(user), active=active
    ) + render_template("dashboard/_recent.html", oob=True, recent=recent)


def _status_fragment(status: dict) -> str:
    return render_template("dashboard/_status.html", oob=True, status=status)


def _toast(session: OptimizationSession, event: str) -> str:
    return render_template(
        "_toast.html",
        session_id=session.id,
        outcome=TOAST_EVENTS[event],
        model=session.model.name if session.model else "a model",
    )


def _alert(alert: dict) -> str:
    return render_template("_alert.html", alert=alert)


class FragmentStream(LiveStream):
    endpoint = "browser"

    def __init__(self, ws, user, since, page: str, room: int | None):
        super().__init__(ws, user, since)
        self.page, self.room = page, room
        self.nonce = user.session_nonce  # the one the page's cookie signed in with

    def review(self, account, token, now) -> None:
        super().review(account, token, now)
        # Logout (from any browser), deactivation and a role change all renew the account's
        # nonce: the cookie this stream opened with signs nothing in any more.
        if account is not None and not secrets.compare_digest(account.session_nonce, self.nonce):
            self.end("signed_out", "Your session has ended; log in again.")

    def farewell(self, error: str, message: str) -> list[str]:
        # The page stops being live (1008 is not reconnected after): say so, and where to go.
        return [render_template("_ended.html", message=message)]

    def _sessions(self, session_ids: list[int], events: list[str]) -> list[str]:
        out, listed, seen = [], False, set()
        for session_id, event in zip(session_ids, events, strict=True):
            session = db.session.get(OptimizationSession, session_id)
            if session is None or not policy.can_see(self.user, session.owner_id):
                continue
            seen.add(event)
            if self.page == "session" and session.id == self.room:
                out.append(_session_fragment(self.user, session))
            elif self.page == "sessions":
                listed = True
            if event in TOAST_EVENTS and session.owner_id == self.user.id:
                out.append(_toast(session, event))
        if listed:
            out.append(_list_changed())
        if self.page == "dashboard" and seen:  # only for sessions this user may see
            out.append(_dashboard_fragment(self.user))
            if {"session_completed", "snapshot"} & seen:
                out.append(render_template("dashboard/_tradeoff_changed.html", oob=True))
        return out

    def snapshot(self) -> list[str]:
        """What changed since the page was rendered (a session page: its state)."""
        if self.page == "session":
            ids = [self.room]
        else:
            ids = [s.id for s in changed_sessions(self.user, self.since)]
        out = self._sessions(ids, ["snapshot"] * len(ids))
        if self.page == "dashboard":
            out.append(_status_fragment(system_status.current()))
        return ["".join(out)] if out else []

    def deliver(self, batch: list[Notification]) -> list[str]:
        sessions = [n for n in batch if n.event.startswith("session_")]
        out = self._sessions([n.data["session_id"] for n in sessions], [n.event for n in sessions])
        for notification in batch:
            if notification.event == "alert":
                out.append(_alert(notification.data))
            elif notification.event == "system_status" and self.page == "dashboard":
                out.append(_status_fragment(notification.data))
        return ["".join(out)] if out else []


@live_route("/ws", "browser")
def browser_updates(ws, ticket):
    if not current_user.is_authenticated:
        raise Refused("not signed in")
    user = current_user._get_current_object()
    page = request.args.get("page", "other")
    page = page if page in PAGES else "other"
    room = None
    if page == "session":
        try:
            room = optimization.get_for(user, parse_id(request.args.get("session", ""))).id
        except (ValueError, ServiceError):
            raise Refused("no such session") from None
        finally:
            db.session.remove()
    FragmentStream(ws, user, since_param(), page, room).run(ticket)
