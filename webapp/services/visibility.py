"""Who may see and change which models and sessions.

Admins see and act on everything. Viewers are read-only observers of the whole
platform. Operators see and act on what they own.
"""

from __future__ import annotations

from ..models import Role, User


def sees_everything(user: User) -> bool:
    return user.role in (Role.ADMIN, Role.VIEWER)


def can_see(user: User, owner_id: int | None) -> bool:
    return sees_everything(user) or owner_id == user.id


def can_change(user: User, owner_id: int | None) -> bool:
    return user.role == Role.ADMIN or (user.role == Role.OPERATOR and owner_id == user.id)
