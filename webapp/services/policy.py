"""Who may do what: every role rule, for views, the API, live streams and templates.

Admins see and act on everything, manage users and the optimization criteria, and get
alerts. Viewers are read-only observers of the whole platform. Operators upload models
and run sessions, and see and act on what they own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tables import Role, User

# The roles that may upload models and start sessions, and those that administer.
CREATORS = (Role.ADMIN, Role.OPERATOR)
ADMINISTRATORS = (Role.ADMIN,)


def sees_everything(user: User) -> bool:
    return user.role in (Role.ADMIN, Role.VIEWER)


def can_see(user: User, owner_id: int | None) -> bool:
    return _sees(sees_everything(user), user.id, owner_id)


def _sees(everything: bool, user_id: int, owner_id: int | None) -> bool:
    return everything or owner_id == user_id


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


@dataclass(frozen=True, slots=True)
class Rights:
    """One user's seeing rights, read once from the account: for checks made for every
    event and every open socket (a live stream re-reads them when the role changes)."""

    user_id: int
    sees_everything: bool
    administers: bool

    @classmethod
    def of(cls, user: User) -> Rights:
        return cls(user.id, sees_everything(user), can_administer(user))

    def can_see(self, owner_id: int | None) -> bool:
        return _sees(self.sees_everything, self.user_id, owner_id)
