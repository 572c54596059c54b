"""`flask --app webapp ...` commands: init-db, create-user, demo, serve, worker."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask_migrate import upgrade
from marshmallow import ValidationError
from sqlalchemy.exc import IntegrityError

from .auth.schemas import NewUserSchema
from .extensions import db
from .health import log_checks, run_checks
from .services import users
from .tables import Role

DEMO_ACCOUNTS = (("demo-operator", Role.OPERATOR), ("demo-viewer", Role.VIEWER))


def _create_user(username: str, password: str, role: str):
    try:
        data = NewUserSchema().load({"username": username, "password": password, "role": role})
    except ValidationError as exc:
        problems = "; ".join(
            f"{field}: {' '.join(msgs)}" for field, msgs in exc.normalized_messages().items()
        )
        raise click.ClickException(problems) from exc
    try:
        return users.create(data["username"], data["password"], data["role"])
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc


def ensure_first_admin() -> None:
    """With no users at all, create the administrator named in [admin]."""
    if users.count():
        return
    settings = current_app.config["OPTIDECK"]["admin"]
    password = settings["password"] or secrets.token_urlsafe(12)
    try:
        user = _create_user(settings["username"], password, Role.ADMIN.value)
    except (IntegrityError, click.ClickException):
        # Several servers starting at once on an empty database (the Procfile's two web
        # processes): one creates the administrator, the others find it made.
        db.session.rollback()
        if users.find(settings["username"]) is None:
            raise
        click.echo(f"Administrator {settings['username']!r} was created by another process.")
        return
    if settings["password"]:
        click.echo(f"Created administrator {user.username!r} with the configured password.")
    else:
        # Printed once, on the console only: it is never logged or stored in clear.
        click.echo(f"Created administrator {user.username!r} with password: {password}")


@click.command("init-db")
def init_db_command():
    """Create or upgrade the database schema (runs the migrations)."""
    upgrade()
    click.echo("Database is at the newest schema.")


@click.command("create-user")
@click.argument("username")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
def create_user_command(username: str, role: str):
    """Create a user; the password comes from OPTIDECK_PASSWORD or a prompt."""
    password = os.environ.get("OPTIDECK_PASSWORD") or click.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )
    user = _create_user(username, password, role)
    click.echo(f"Created {user.role} {user.username!r}.")


@click.command("demo")
def demo_command():
    """Fill a fresh install with demo accounts, models and finished sessions (idempotent)."""
    from .demo import create_demo_models, wait_for

    upgrade()
    ensure_first_admin()
    password = os.environ.get("OPTIDECK_PASSWORD")
    for username, role in DEMO_ACCOUNTS:
        if users.find(username):
            click.echo(f"Demo user {username!r} already exists (password unchanged).")
            continue
        chosen = password or secrets.token_urlsafe(12)
        _create_user(username, chosen, role.value)
        shown = "the password in OPTIDECK_PASSWORD" if password else f"password: {chosen}"
        click.echo(f"Created demo {role.value} {username!r} with {shown}")
    sessions = create_demo_models(DEMO_ACCOUNTS[0][0])
    if sessions:
        wait_for(sessions)


def _worker_class_args(server: dict) -> list[str]:
    """gunicorn's worker class and its capacity: gthread's threads, or gevent's greenlets.
    Both answer gunicorn's own refusals under /api/ with the API's error body."""
    if server["worker_class"] == "gevent":
        return [
            "--worker-class",
            "webapp.gunicorn_gevent.ApiErrorGeventWorker",
            "--worker-connections",
            str(server["connections"]),
        ]
    return [
        "--worker-class",
        "webapp.gunicorn_conf.ApiErrorWorker",
        "--threads",
        str(server["threads"]),
        # gthread counts open connections against this (default 1000); WebSockets stay open.
        "--worker-connections",
        str(max(1000, 2 * server["threads"])),
    ]


@click.command("serve")
@click.option("--demo", is_flag=True, help="Also create the demo data before serving.")
def serve_command(demo: bool):
    """Migrate, create the first admin, then serve with gunicorn (server.worker_class)."""
    ctx = click.get_current_context()
    if demo:
        ctx.invoke(demo_command)
    else:
        upgrade()
        ensure_first_admin()
    if not log_checks(run_checks()):
        raise click.ClickException("start-up checks failed; see the log lines above")
    server = current_app.config["OPTIDECK"]["server"]
    click.echo(f"Serving Optideck on http://{server['host']}:{server['port']}")
    sys.stdout.flush()
    # Replace this process: gunicorn's workers each build their own app from webapp/wsgi.py.
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{server['host']}:{server['port']}",
        "--workers",
        str(server["workers"]),
        *_worker_class_args(server),
        "--timeout",
        str(server["timeout"]),
        "--keep-alive",
        str(server["keepalive"]),
        "--graceful-timeout",
        "10",
        # Its shared default path would collide between two servers on one host.
        "--no-control-socket",
        "--config",
        "python:webapp.gunicorn_conf",
        "webapp.wsgi:app",
    ]
    env = dict(os.environ)
    if server["workers"] > 1 and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: prometheus-client's multiprocess mode (each worker writes its
        # values here; /metrics on any worker adds them up). Set before a worker imports
        # prometheus_client, and emptied: a previous run's files would count again. A
        # directory given in the environment is the operator's (shared with Celery
        # workers, say) and is left as it is.
        metrics_dir = Path(current_app.instance_path) / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(mode=0o700, parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.execve(sys.executable, args, env)  # noqa: S606 - fixed argv, no shell


@click.command("worker")
@click.option("--loglevel", default="INFO", show_default=True, help="Celery's log level.")
def worker_command(loglevel: str):
    """Run a Celery worker for this app's sessions (executor.backend = "celery");
    executor.max_workers sessions at once."""
    if current_app.config["OPTIDECK"]["executor"]["backend"] != "celery":
        raise click.ClickException(
            'executor.backend is "local": web processes run the sessions themselves. '
            'Set it to "celery" (OPTIDECK_EXECUTOR_BACKEND=celery) to run Celery workers.'
        )
    from .services.celery_queue import run_worker

    run_worker(current_app._get_current_object(), loglevel)  # type: ignore[attr-defined]


def init_app(app: Flask) -> None:
    for command in (init_db_command, create_user_command, demo_command, serve_command, worker_command):
        app.cli.add_command(command)
