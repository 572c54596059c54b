"""Bearer tokens: issue, refresh, revoke, and check them. Only hashes are stored."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.orm import joinedload, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from ..extensions import db
from ..tables import ApiToken, User, utcnow
from . import audit
from .signals import announce_access_change

# Prefixes make a leaked token recognisable to secret scanners; they are not secrets.
TOKEN_PREFIX = "odk_"  # noqa: S105
REFRESH_PREFIX = "odr_"  # noqa: S105
# Touching last_used_at on every call would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Tokens this process (this app) remembers: token hash -> (the accounts' generation they
# were read at, until when (monotonic), a copy of the token and its owner attached to no
# database session).
REMEMBERED_MAX = 1000
# A remembered token is read again after this long whatever the generation says: should
# a change's bump fail to reach Redis (out of memory, a read-only replica), a revocation
# or a role change is still seen within these seconds, not only at the minute's touch.
REMEMBER_SECONDS = 5.0


@dataclass(frozen=True)
class IssuedToken:
    """What a caller is shown once: the secrets, never stored as such."""

    record: ApiToken
    access_token: str
    refresh_token: str | None = None


class TokenRejected(Exception):
    """A bearer token that does not authenticate; `code` is the API's error word."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _hash(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def _new(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def _settings() -> dict:
    return current_app.config["OPTIDECK"]["security"]


def issue_login_token(user: User) -> IssuedToken:
    """An access token with a refresh token, for POST /api/v1/auth/token."""
    now = utcnow()
    access, refresh = _new(TOKEN_PREFIX), _new(REFRESH_PREFIX)
    record = ApiToken(
        user_id=user.id,
        name="API login",
        kind="login",
        prefix=access[:10],
        token_hash=_hash(access),
        refresh_hash=_hash(refresh),
        created_at=now,
        expires_at=now + timedelta(minutes=_settings()["access_token_minutes"]),
        refresh_expires_at=now + timedelta(days=_settings()["refresh_token_days"]),
    )
    db.session.add(record)
    db.session.flush()
    audit.record("token.issue", user=user, resource=f"token:{record.id}", commit=False)
    db.session.commit()
    return IssuedToken(record, access, refresh)


def refresh(refresh_token: str) -> IssuedToken:
    """Swap a refresh token for a new pair; the old pair stops working."""
    record = db.session.scalar(select(ApiToken).where(ApiToken.refresh_hash == _hash(refresh_token)))
    now = utcnow()
    if record is None or record.revoked_at is not None or not record.owner.active:
        raise TokenRejected("token_invalid", "The refresh token is not valid.")
    if record.refresh_expires_at is None or record.refresh_expires_at <= now:
        raise TokenRejected("token_expired", "The refresh token has expired; log in again.")
    access, new_refresh = _new(TOKEN_PREFIX), _new(REFRESH_PREFIX)
    record.prefix = access[:10]
    record.token_hash = _hash(access)
    record.refresh_hash = _hash(new_refresh)
    record.expires_at = now + timedelta(minutes=_settings()["access_token_minutes"])
    audit.record("token.refresh", user=record.owner, resource=f"token:{record.id}", commit=False)
    db.session.commit()
    return IssuedToken(record, access, new_refresh)


def create_personal(user: User, name: str, expires_in_days: int, read_only: bool) -> IssuedToken:
    limit = _settings()["personal_token_max_days"]
    if expires_in_days > limit:
        raise ValueError(f"A token may live at most {limit} days.")
    now = utcnow()
    access = _new(TOKEN_PREFIX)
    record = ApiToken(
        user_id=user.id,
        name=name,
        kind="personal",
        prefix=access[:10],
        token_hash=_hash(access),
        read_only=read_only,
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days),
    )
    db.session.add(record)
    db.session.flush()
    audit.record(
        "token.issue",
        user=user,
        resource=f"token:{record.id}",
        detail=f"personal name={name!r} read_only={read_only}",
        commit=False,
    )
    db.session.commit()
    return IssuedToken(record, access)


def revoke(record: ApiToken, *, by: User) -> None:
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    audit.record("token.revoke", user=by, resource=f"token:{record.id}", commit=False)
    db.session.commit()
    announce_access_change()


def authenticate(header: str | None, auth_generation: int | None = None) -> tuple[User, ApiToken]:
    """The user and token behind an `Authorization: Bearer ...` header.

    `auth_generation` is the accounts' generation read for this request before anything
    else (caching.generations()); with it, a token this process read at that same
    generation is not read again. Every change to a user or a token moves it on in every
    process (caching.py), so the next request after a revocation, refresh, deactivation
    or role change reads the database again. Only accepted tokens are remembered, and
    only for REMEMBER_SECONDS, until they expire or until their last use is due to be
    written, whichever comes first."""
    if not header:
        raise TokenRejected("token_missing", "Send 'Authorization: Bearer <token>'.")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise TokenRejected("token_invalid", "The Authorization header is not a bearer token.")
    digest = _hash(token)
    now = utcnow()
    remembered_tokens = current_app.extensions.setdefault("optideck.remembered_tokens", {})
    if auth_generation is not None:
        remembered = remembered_tokens.get(digest)
        if (
            remembered is not None
            and remembered[0] == auth_generation
            and remembered[1] > time.monotonic()
            and _still_good(remembered[2], now)
        ):
            # A copy in this request's session, from memory (no query): the template is
            # never attached, so requests on other threads share it safely.
            record = db.session.merge(remembered[2], load=False)
            return record.owner, record
    record = db.session.scalar(
        select(ApiToken).options(joinedload(ApiToken.owner)).where(ApiToken.token_hash == digest)
    )
    if record is None or record.revoked_at is not None:
        raise TokenRejected("token_invalid", "The token is unknown or has been revoked.")
    if not record.owner.active:
        raise TokenRejected("token_invalid", "The token's account is deactivated.")
    if record.expires_at <= now:
        raise TokenRejected("token_expired", "The token has expired; refresh it or log in again.")
    stale = record.last_used_at is None or now - record.last_used_at > LAST_USED_RESOLUTION
    if stale:
        record.last_used_at = now
    # Copied before the commit expires the rows, remembered once it succeeded.
    template = _template(record) if auth_generation is not None else None
    if stale:
        db.session.commit()
    if template is not None:
        if len(remembered_tokens) >= REMEMBERED_MAX:
            remembered_tokens.clear()
        remembered_tokens[digest] = (auth_generation, time.monotonic() + REMEMBER_SECONDS, template)
    return record.owner, record


def _still_good(template: ApiToken, now) -> bool:
    last_used = template.last_used_at
    return template.expires_at > now and last_used is not None and now - last_used <= LAST_USED_RESOLUTION


def _template(record: ApiToken) -> ApiToken:
    """A detached copy of the token and its owner, column values only."""
    token, owner = _detached_copy(record), _detached_copy(record.owner)
    set_committed_value(token, "owner", owner)
    return token


def _detached_copy(instance):
    mapper = sa_inspect(instance).mapper
    copy = mapper.class_manager.new_instance()
    for column in mapper.column_attrs:
        set_committed_value(copy, column.key, getattr(instance, column.key))
    make_transient_to_detached(copy)
    return copy


def for_user(user: User) -> list[ApiToken]:
    return list(
        db.session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.id)
            .order_by(ApiToken.revoked_at.is_not(None), ApiToken.created_at.desc())
        )
    )


def get_owned(user: User, token_id: int) -> ApiToken | None:
    record = db.session.get(ApiToken, token_id)
    return record if record is not None and record.user_id == user.id else None
