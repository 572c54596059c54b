"""The audit trail: every login, logout, token change, denial and state change."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import has_request_context, request
from sqlalchemy import func, select

from ..extensions import db
from ..requestlog import request_id
from ..tables import AuditEntry, User
from .errors import ServiceError

ERROR_WORDS = {401: "token_missing", 403: "forbidden", 404: "not_found"}
DENIED = {
    403: "Your account is not allowed to do this: viewers only read, operators act on their own "
    "models and sessions, and a read-only token changes nothing.",
    404: "There is nothing at this address.",
}

log = logging.getLogger("optideck.audit")

PER_PAGE = 50


def record(
    action: str,
    *,
    user: User | None = None,
    username: str | None = None,
    resource: str | None = None,
    allowed: bool = True,
    detail: str | None = None,
    commit: bool = True,
) -> AuditEntry:
    """Add an audit entry; `commit=False` lets it share the action's transaction."""
    entry = AuditEntry(
        user_id=user.id if user else None,
        username=user.username if user else username,
        action=action,
        resource=resource,
        allowed=allowed,
        detail=detail,
        request_id=request_id() if has_request_context() else None,
        remote_addr=request.remote_addr if has_request_context() else None,
    )
    db.session.add(entry)
    if commit:
        db.session.commit()
    log.info("audit action=%s user=%s resource=%s allowed=%s", action, entry.username, resource, allowed)
    return entry


def deny(
    action: str, user: User | None, resource: str | None = None, detail: str | None = None, status: int = 403
):
    """Record a denial, then refuse with a ServiceError of `status` (403 unless said)."""
    # The denied request may have left pending changes; none of them may land.
    db.session.rollback()
    record(action, user=user, resource=resource, allowed=False, detail=detail)
    raise ServiceError(status, ERROR_WORDS.get(status, "forbidden"), DENIED.get(status, DENIED[403]))


@dataclass(frozen=True)
class AuditFilters:
    """The audit page's filters, read leniently from a query string."""

    username: str = ""
    action: str = ""
    outcome: str = ""  # "", "allowed" or "denied"
    page: int = 1

    @classmethod
    def from_args(cls, args) -> AuditFilters:
        page = args.get("page", "1")
        outcome = args.get("outcome", "")
        return cls(
            username=args.get("user", "").strip().lower()[:64],
            action=args.get("action", "").strip()[:64],
            outcome=outcome if outcome in {"allowed", "denied"} else "",
            page=int(page) if page.isdecimal() and len(page) <= 9 and int(page) > 0 else 1,
        )

    def query_args(self, **changes) -> dict[str, str | int]:
        """The filters as URL arguments, so pagination keeps them."""
        values = {
            "user": self.username,
            "action": self.action,
            "outcome": self.outcome,
            "page": self.page,
            **changes,
        }
        return {key: value for key, value in values.items() if value not in ("", None, 1)}


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    total: int
    page: int
    pages: int


def search(filters: AuditFilters, per_page: int = PER_PAGE) -> AuditPage:
    query = select(AuditEntry)
    if filters.username:
        query = query.where(AuditEntry.username == filters.username)
    if filters.action:
        query = query.where(AuditEntry.action == filters.action)
    if filters.outcome:
        query = query.where(AuditEntry.allowed.is_(filters.outcome == "allowed"))
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    pages = max(1, -(-total // per_page))
    page = min(filters.page, pages)
    entries = db.session.scalars(
        query.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    )
    return AuditPage(list(entries), total, page, pages)


def known_actions() -> list[str]:
    return list(db.session.scalars(select(AuditEntry.action).distinct().order_by(AuditEntry.action)))
