"""The platform's rules, and the only code that writes the database.

Each service is bound to the app in init_app() and reached through
`services.get(name)` (or the helpers of each module), so routes stay thin.
"""

from __future__ import annotations

from flask import Flask, current_app


def init_app(app: Flask) -> None:
    from .executor import LocalExecutor
    from .notifications import NotificationService
    from .storage import BlobStore

    app.extensions["optideck.notifications"] = NotificationService()
    app.extensions["optideck.blobs"] = BlobStore(app.config["OPTIDECK"]["storage"]["dir"])
    app.extensions["optideck.executor"] = LocalExecutor(app)


def get(name: str):
    return current_app.extensions[f"optideck.{name}"]
