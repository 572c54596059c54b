"""Database tables (SQLAlchemy 2.0 typed models)."""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime

from flask_login import UserMixin
from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text, types
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(types.TypeDecorator):
    """Timezone-aware UTC datetimes on every backend.

    SQLite drops the offset; storing naive UTC and re-attaching UTC on load
    keeps comparisons and ISO output the same on SQLite and PostgreSQL.
    """

    impl = types.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use webapp.tables.utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


def new_session_nonce() -> str:
    return secrets.token_hex(16)


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.VIEWER.value)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Part of the id a browser session carries: a new nonce (at logout, deactivation or a
    # role change) ends every browser session of the account, cookies saved before included.
    session_nonce: Mapped[str] = mapped_column(String(32), default=new_session_nonce)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="owner")

    def get_id(self) -> str:
        return f"{self.id}:{self.session_nonce}"

    def end_browser_sessions(self) -> None:
        self.session_nonce = new_session_nonce()

    @property
    def is_active(self) -> bool:  # flask-login refuses sessions of inactive users
        return self.active

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def __repr__(self) -> str:
        return f"<User {self.username} {self.role}>"


class ApiToken(db.Model):
    """A bearer token. Only hashes are stored; the token is shown once.

    `kind` is `login` for tokens from POST /api/v1/auth/token (which come with a
    refresh token) and `personal` for named tokens made on /account/tokens.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    refresh_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    read_only: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    refresh_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    owner: Mapped[User] = relationship(back_populates="tokens")

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= utcnow():
            return "expired"
        return "active"


class AuditEntry(db.Model):
    """Who did what to which resource, and whether it was allowed."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_created_at", "created_at"),
        Index("ix_audit_entries_user_created", "username", "created_at"),
        Index("ix_audit_entries_action_created", "action", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Kept by name too: the trail must outlive a renamed or removed account.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str | None] = mapped_column(String(200))
    allowed: Mapped[bool]
    request_id: Mapped[str | None] = mapped_column(String(64))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class SessionStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (SessionStatus.QUEUED.value, SessionStatus.RUNNING.value)
FINISHED_STATUSES = (SessionStatus.COMPLETED.value, SessionStatus.FAILED.value, SessionStatus.CANCELLED.value)


class ModelMetadata(db.Model):
    """An uploaded model. The file lives in the content-addressed store under `sha256`."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_owner_created", "owner_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(default=1)
    format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(types.BigInteger)
    parameter_count: Mapped[int] = mapped_column(types.BigInteger)
    input_spec: Mapped[list] = mapped_column(types.JSON)
    analysis: Mapped[dict] = mapped_column(types.JSON)
    eval_data_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    eval_data_summary: Mapped[dict | None] = mapped_column(types.JSON)
    # The metric that gates its sessions' steps: an id of engine/metrics.py's TASKS.
    task: Mapped[str] = mapped_column(String(32), default="auto", server_default="auto")
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Deleting keeps the row (sessions still name their model) but drops the file.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    owner: Mapped[User | None] = relationship()


class OptimizationSession(db.Model):
    __tablename__ = "optimization_sessions"
    __table_args__ = (
        Index("ix_sessions_status_created", "status", "created_at"),
        Index("ix_sessions_model_created", "model_id", "created_at"),
        Index("ix_sessions_owner_created", "owner_id", "created_at"),
        # The list's sort orders, for everyone who sees all sessions.
        Index("ix_sessions_created", "created_at", "id"),
        Index("ix_sessions_updated", "updated_at", "id"),
        Index("ix_sessions_size", "size_reduction_percent", "id"),
        Index("ix_sessions_speed", "speed_improvement_percent", "id"),
        # PostgreSQL sorts NULLs first in a backward scan, so "largest first, no result
        # last" needs indexes of its own there; SQLite's NULLs sort smallest anyway.
        Index(
            "ix_sessions_size_desc", text("size_reduction_percent DESC NULLS LAST"), text("id DESC")
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_sessions_speed_desc", text("speed_improvement_percent DESC NULLS LAST"), text("id DESC")
        ).ddl_if(dialect="postgresql"),
        # Dashboard averages read from the index alone.
        Index("ix_sessions_status_results", "status", "size_reduction_percent", "speed_improvement_percent"),
        Index("ix_sessions_owner_status", "owner_id", "status"),
        # The dashboard's "recently finished", newest first, for everyone and per owner:
        # without them each dashboard sorted every finished session (44 ms at 100,000).
        Index("ix_sessions_completed", "completed_at", "id"),
        Index("ix_sessions_owner_completed", "owner_id", "completed_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default=SessionStatus.QUEUED.value)
    progress: Mapped[float] = mapped_column(default=0.0)
    current_step: Mapped[str | None] = mapped_column(String(64))
    techniques: Mapped[list] = mapped_column(types.JSON)
    parameters: Mapped[dict] = mapped_column(types.JSON)
    criteria: Mapped[dict] = mapped_column(types.JSON)  # frozen copy at start
    plan: Mapped[list] = mapped_column(types.JSON)
    results: Mapped[dict | None] = mapped_column(types.JSON)
    # Copied out of `results` so lists can sort and dashboards average in SQL.
    size_reduction_percent: Mapped[float | None] = mapped_column(types.Float)
    speed_improvement_percent: Mapped[float | None] = mapped_column(types.Float)
    # The criteria version that allowed this session's plan (its frozen copy is `criteria`).
    criteria_version: Mapped[int | None]
    error_type: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    artifact_size_bytes: Mapped[int | None] = mapped_column(types.BigInteger)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    estimated_completion_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    model: Mapped[ModelMetadata] = relationship()
    owner: Mapped[User | None] = relationship()
    events: Mapped[list[SessionEvent]] = relationship(
        back_populates="session", order_by="SessionEvent.id", cascade="all, delete-orphan"
    )

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class SessionEvent(db.Model):
    """One line of a session's timeline."""

    __tablename__ = "session_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("optimization_sessions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    step: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict | None] = mapped_column(types.JSON)

    session: Mapped[OptimizationSession] = relationship(back_populates="events")


class CriteriaVersion(db.Model):
    """One saved version of the optimization criteria; the highest number is current.

    `version` is unique: two saves based on the same version race for the next
    number, and the database lets exactly one of them have it.
    """

    __tablename__ = "criteria_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(unique=True)
    document: Mapped[dict] = mapped_column(types.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_by_name: Mapped[str | None] = mapped_column(String(64))
    reverted_from: Mapped[int | None]  # the version this one restored, if it is a revert


class StoredFile(db.Model):
    """A file in the content-addressed store, by its sha256.

    Models, their evaluation data and session artifacts refer to stored files by hash, so
    identical bytes are stored once. The row outlives its file: it is what writers lock
    while they add or remove the file, so a delete never races an upload of the same bytes.
    """

    __tablename__ = "stored_files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int | None] = mapped_column(types.BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SessionCandidate(db.Model):
    """A search's kept candidate (on the trade-off front, or chosen) and its stored file;
    its figures are in the session's `results.candidates`."""

    __tablename__ = "session_candidates"
    __table_args__ = (UniqueConstraint("session_id", "candidate_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("optimization_sessions.id", ondelete="CASCADE"))
    candidate_index: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(types.BigInteger)
