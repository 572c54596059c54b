"""Optideck: a console for model optimization sessions."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RESOURCES_DIR, ensure_secret_key, load_config, masked

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("optideck")


def create_app(config: dict[str, dict[str, Any]] | None = None) -> Flask:
    """The app factory. `config` overrides settings: {"section": {"key": value}}."""
    from flask import Flask

    settings = load_config(overrides=config)
    app = Flask(
        __name__,
        template_folder=str(RESOURCES_DIR / "templates"),
        static_folder=str(RESOURCES_DIR / "static"),
        instance_path=settings["app"]["instance_dir"],
    )
    _configure(app, settings)

    from . import bounds, errors, health, requestlog
    from .extensions import cache, csrf, db, limiter, migrate

    requestlog.configure_logging(settings["logging"]["level"], settings["logging"]["json"])
    requestlog.init_app(app)  # first: its before_request resets per-request state
    bounds.init_app(app)  # before any blueprint: it bounds their <int:...> converters
    db.init_app(app)
    migrate.init_app(app, db, directory=str(RESOURCES_DIR / "migrations"), render_as_batch=True)
    csrf.init_app(app)
    limiter.init_app(app)
    cache.init_app(app)
    errors.init_app(app)
    health.init_app(app)

    from . import api, auth, cli, live, monitoring, services, web
    from .services.criteria import check_defaults

    check_defaults(settings)
    _tune_sqlite(app)
    services.init_app(app)
    auth.init_app(app)
    web.init_app(app)
    api.init_app(app)
    live.init_app(app)
    monitoring.init_app(app)
    cli.init_app(app)

    log.info("effective configuration: %s", json.dumps(masked(settings), sort_keys=True))
    return app


def _tune_sqlite(app: Flask) -> None:
    """WAL and a busy timeout let the executor thread and request threads write
    at once without "database is locked"."""
    from sqlalchemy import event

    from .extensions import db

    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        return
    with app.app_context():
        engine = db.engine
    database = engine.url.database

    @event.listens_for(engine, "connect")
    def on_connect(connection, _record):
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        # In WAL mode NORMAL stays consistent after a crash (the last commits
        # may roll back on power loss) and saves an fsync per commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        # SQLite creates its files with the umask's mode (often world-readable).
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(f"{database}{suffix}", 0o600)


def _engine_options(database: dict) -> dict[str, Any]:
    options: dict[str, Any] = {"pool_pre_ping": True}
    if not database["url"].startswith("sqlite"):
        # SQLite (one file, one host) keeps SQLAlchemy's own pool for it.
        options.update(pool_size=database["pool_size"], max_overflow=database["max_overflow"])
    return options


def _configure(app: Flask, settings: dict[str, dict[str, Any]]) -> None:
    # SQLite, the default, cannot create the folder its file lives in.
    # The secret key, the default database and the store live here: the server's alone.
    Path(settings["app"]["instance_dir"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    redis_url = settings["redis"]["url"]
    app.config.update(
        OPTIDECK=settings,
        SECRET_KEY=ensure_secret_key(settings),
        SQLALCHEMY_DATABASE_URI=settings["database"]["url"],
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings["database"]),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings["security"]["session_cookie_secure"],
        REMEMBER_COOKIE_SECURE=settings["security"]["session_cookie_secure"],
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session instead, which expires itself
        MAX_CONTENT_LENGTH=settings["uploads"]["max_bytes"],
        RATELIMIT_STORAGE_URI=redis_url or "memory://",
        # In-memory per process by default; shared (and invalidated everywhere) with Redis.
        CACHE_TYPE="RedisCache" if redis_url else "SimpleCache",
        CACHE_REDIS_URL=redis_url or None,
        CACHE_KEY_PREFIX="optideck:",
        CACHE_DEFAULT_TIMEOUT=settings["dashboard"]["stats_cache_seconds"],
        RATELIMIT_HEADERS_ENABLED=True,
    )
