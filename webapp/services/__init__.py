"""The platform's rules, and the only code that writes the database.

Each service is bound to the app in init_app() and reached through
`services.get(name)` (or the helpers of each module), so routes stay thin.
"""

from __future__ import annotations

from flask import Flask, current_app


def init_app(app: Flask) -> None:
    from ..config import ConfigError
    from . import alerts, notifications, storage
    from .executor import LocalExecutor
    from .model_store import AnalysisSlots
    from .sandbox import Sandbox
    from .system_status import StatusWatch

    config = app.config["OPTIDECK"]
    app.extensions["optideck.notifications"] = notifications.for_config(config)
    app.extensions["optideck.blobs"] = storage.for_config(config)
    app.extensions["optideck.sandbox"] = Sandbox(config)
    app.extensions["optideck.analysis_slots"] = AnalysisSlots(
        config["uploads"]["max_concurrent_analyses"], config["uploads"]["analysis_timeout_seconds"]
    )
    if config["executor"]["backend"] == "celery":
        from .celery_queue import CeleryQueue

        # Celery workers run the sessions (`flask --app webapp worker`); this process queues them.
        app.extensions["optideck.executor"] = CeleryQueue(app)
    elif config["executor"]["backend"] == "local":
        app.extensions["optideck.executor"] = LocalExecutor(app)
    else:
        raise ConfigError(
            f'executor.backend must be "local" or "celery", not {config["executor"]["backend"]!r}'
        )
    app.extensions["optideck.status"] = StatusWatch(app)
    alerts.init_app(app)


def get(name: str):
    return current_app.extensions[f"optideck.{name}"]
