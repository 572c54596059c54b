"""Users, roles, login, API tokens and the audit trail."""

from flask import Flask

from ..extensions import db, login_manager
from ..models import User


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to continue."
    login_manager.login_message_category = "info"
    # A stolen session cookie used from elsewhere is dropped, not honoured.
    login_manager.session_protection = "strong"

    @login_manager.user_loader
    def load_user(user_id: str):
        if not user_id.isdigit():
            return None
        user = db.session.get(User, int(user_id))
        # A deactivated account's open browser sessions end with its next request.
        return user if user is not None and user.active else None

    from .views import bp

    app.register_blueprint(bp)
