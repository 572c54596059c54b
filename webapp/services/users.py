"""Accounts: creation, roles, activation, password checks."""

from __future__ import annotations

import functools

from flask import current_app
from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..tables import Role, User, utcnow
from . import audit
from .signals import announce_access_change


def _hash_method() -> str:
    return current_app.config["OPTIDECK"]["security"]["password_hash_method"]


@functools.cache
def _dummy_hash(method: str) -> str:
    """Checked against when the username is unknown, so a wrong name and a wrong password
    take the same time and cannot be told apart: made with the method real hashes get."""
    return generate_password_hash("optideck-timing-equaliser", method=method)


class UserError(ValueError):
    """A rule about accounts was broken; the message says which."""


def find(username: str) -> User | None:
    return db.session.scalar(select(User).where(User.username == username.lower()))


def authenticate(username: str, password: str) -> User | None:
    """The active user with these credentials, or None (whatever the reason)."""
    user = find(username)
    if user is None:
        check_password_hash(_dummy_hash(_hash_method()), password)
        return None
    if not check_password_hash(user.password_hash, password) or not user.active:
        return None
    return user


def log_in(username: str, password: str, via: str) -> User | None:
    """A login from the page or the API (`via`): the user when the credentials hold, with
    the last login set to now; None otherwise. Both outcomes are audited as "login"."""
    user = authenticate(username, password)
    if user is None:
        audit.record(
            "login", username=username[:64] or None, allowed=False, detail=f"wrong credentials ({via})"
        )
        return None
    user.last_login_at = utcnow()
    audit.record("login", user=user, detail=via, commit=False)
    db.session.commit()
    return user


def create(username: str, password: str, role: str, *, by: User | None = None) -> User:
    if find(username) is not None:
        raise UserError(f"A user named {username!r} already exists.")
    user = User(
        username=username.lower(),
        password_hash=generate_password_hash(password, method=_hash_method()),
        role=Role(role).value,
    )
    db.session.add(user)
    db.session.flush()
    audit.record(
        "user.create",
        user=by,
        username=None if by else "cli",
        resource=f"user:{user.username}",
        detail=f"role={user.role}",
        commit=False,
    )
    db.session.commit()
    return user


def set_role(user: User, role: str, *, by: User) -> None:
    role = Role(role).value
    if user.role == Role.ADMIN and role != Role.ADMIN:
        _keep_one_admin(user)
    old, user.role = user.role, role
    if old != role:
        # Its browsers sign in again: a page or live stream opened under the old role
        # must not keep showing what that role could see.
        user.end_browser_sessions()
    audit.record(
        "user.role", user=by, resource=f"user:{user.username}", detail=f"{old} -> {role}", commit=False
    )
    db.session.commit()
    announce_access_change()


def set_active(user: User, active: bool, *, by: User) -> None:
    if not active and user.is_admin:
        _keep_one_admin(user)
    user.active = active
    if not active:
        # A deactivated account's tokens and browser sessions stop working at once, and
        # stay dead: reactivating it revives neither.
        for token in user.tokens:
            if token.revoked_at is None:
                token.revoked_at = utcnow()
        user.end_browser_sessions()
    audit.record(
        "user.activate" if active else "user.deactivate",
        user=by,
        resource=f"user:{user.username}",
        commit=False,
    )
    db.session.commit()
    announce_access_change()


def sign_out(user: User) -> None:
    """Logout: ends every browser session of the account on the server, so a cookie
    copied before now opens nothing (no page, no live stream, no new API token)."""
    user.end_browser_sessions()
    audit.record("logout", user=user)
    announce_access_change()


def _keep_one_admin(user: User) -> None:
    others = db.session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN, User.active.is_(True), User.id != user.id)
    )
    if not others:
        raise UserError("This is the last active administrator; make another one first.")


def count() -> int:
    return db.session.scalar(select(func.count()).select_from(User)) or 0


def list_all() -> list[User]:
    return list(db.session.scalars(select(User).order_by(User.username)))


def get(user_id: int) -> User | None:
    return db.session.get(User, user_id)
