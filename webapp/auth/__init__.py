"""Signing in: the login page, flask-login's session loader, the guards every route
passes and the login budget. The rules about accounts, tokens and the audit trail
are services (services/users.py, tokens.py, audit.py)."""

import secrets

from flask import Flask

from ..extensions import db, login_manager
from ..tables import User
from .budget import end_turn


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to continue."
    login_manager.login_message_category = "info"
    # A stolen session cookie used from elsewhere is dropped, not honoured.
    login_manager.session_protection = "strong"
    app.teardown_request(end_turn)

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
