"""Who may do what: every role rule, for views, the API, live streams and templates.

Admins see and act on everything, manage users and the optimization criteria, and get
alerts. Viewers are read-only observers of the whole platform. Operators upload models
and run sessions, and see and act on what they own.
"""

from __future__ import annotations

from ..tables import Role, User

# The roles that may upload models and start sessions, and those that administer.
CREATORS = (Role.ADMIN, Role.OPERATOR)
ADMINISTRATORS = (Role.ADMIN,)


def sees_everything(user: User) -> bool:
    return user.role in (Role.ADMIN, Role.VIEWER)


def can_see(user: User, owner_id: int | None) -> bool:
    return sees_everything(user) or owner_id == user.id


def can_change(user: User, owner_id: int | None) -> bool:
    return user.role == Role.ADMIN or (user.role == Role.OPERATOR and owner_id == user.id)


def can_create(user: User) -> bool:
    """Upload models and start sessions (of models the user may change)."""
    return user.role in CREATORS


def can_administer(user: User) -> bool:
    """Users, the audit trail, the criteria, server settings and alerts."""
    return user.role in ADMINISTRATORS


def scope(query, owner_column, user: User):
    """`query` narrowed to the rows `user` may see, `owner_column` naming their owner: the
    one place a list, a count or a live snapshot learns what a user may see."""
    return query if sees_everything(user) else query.where(owner_column == user.id)
