"""Dependency checks, run at start-up and on /readyz; /healthz says the process is up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Blueprint, Flask, current_app, jsonify
from flask_migrate import Migrate
from sqlalchemy import text

from .extensions import csrf, db
from .services.errors import ServiceError
from .services.notifications import RedisNotificationService

log = logging.getLogger("optideck.health")

bp = Blueprint("health", __name__)
csrf.exempt(bp)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_database() -> list[Check]:
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # any driver error means "not reachable"
        return [
            Check("database", False, f"not reachable: {type(exc).__name__}"),
            Check("migrations", False, "unknown: database not reachable"),
        ]
    migrate: Migrate = current_app.extensions["migrate"].migrate
    head = ScriptDirectory.from_config(migrate.get_config()).get_current_head()
    if current != head:
        detail = f"at {current or 'nothing'}, head is {head}: run `flask --app webapp init-db`"
        return [Check("database", True, "reachable"), Check("migrations", False, detail)]
    return [Check("database", True, "reachable"), Check("migrations", True, f"at {head}")]


def check_storage() -> Check:
    try:
        detail = current_app.extensions["optideck.blobs"].check()
    except OSError as exc:
        # /readyz answers anyone: the folder is named by storage.dir, not here.
        return Check("storage", False, f"storage.dir is not writable: {exc.strerror}")
    except ServiceError:  # a bucket store's: logged there with its cause
        return Check("storage", False, "the model store's bucket is not reachable")
    return Check("storage", True, detail)


def check_redis() -> Check | None:
    url = current_app.config["OPTIDECK"]["redis"]["url"]
    if not url:
        return None
    try:
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        return Check("redis", False, f"not reachable: {type(exc).__name__}")
    return Check("redis", True, "reachable")


def check_fanout() -> Check | None:
    """With Redis, live events reach this process's clients only through its listener."""
    service = current_app.extensions["optideck.notifications"]
    if not isinstance(service, RedisNotificationService):
        return None
    if service.wait_connected(timeout=1):
        return Check("fanout", True, f"subscribed to {service.channel}")
    reason = f" ({service.last_error})" if service.last_error else ""
    return Check("fanout", False, f"not subscribed to Redis{reason}: live clients miss events until it is")


def run_checks() -> list[Check]:
    checks = [*check_database(), check_storage()]
    for check in (check_redis(), check_fanout()):
        if check is not None:
            checks.append(check)
    return checks


def log_checks(checks: list[Check]) -> bool:
    for check in checks:
        (log.info if check.ok else log.error)(
            "check %s: %s %s", check.name, "ok" if check.ok else "FAILED", check.detail
        )
    return all(check.ok for check in checks)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    checks = run_checks()
    ready = all(check.ok for check in checks)
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in checks},
    }
    return jsonify(body), 200 if ready else 503


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
