"""Users, roles, login, API tokens and the audit trail."""

import secrets

from blinker import Namespace
from flask import Flask, current_app

from ..extensions import db, login_manager
from ..models import User

# Sent, with the app as sender, once a change to what an account or token may do is
# committed (deactivation, role change, logout, revocation): this process's open live
# streams re-check at once instead of at their next periodic check.
access_changed = Namespace().signal("access-changed")


def announce_access_change() -> None:
    access_changed.send(current_app._get_current_object())


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to continue."
    login_manager.login_message_category = "info"
    # A stolen session cookie used from elsewhere is dropped, not honoured.
    login_manager.session_protection = "strong"

    @login_manager.user_loader
    def load_user(session_id: str):
        # "<user id>:<nonce>" (User.get_id): a cookie whose nonce is no longer the
        # account's (logged out, deactivated, role changed) opens nothing.
        user_id, _, nonce = session_id.partition(":")
        if not user_id.isdigit() or len(user_id) > 12 or not nonce:
            return None
        user = db.session.get(User, int(user_id))
        if user is None or not user.active or not secrets.compare_digest(user.session_nonce, nonce):
            return None
        return user

    from .views import bp

    app.register_blueprint(bp)
