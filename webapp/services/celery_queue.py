"""Sessions run by Celery workers (`[executor] backend = "celery"`), Redis the broker.

A web process queues a task naming the session once the session is committed, and runs
no executor. A worker (`flask --app webapp worker`) runs each task's session with the
same supervision as the local executor (executor.run_one): the sandbox runs the model,
Celery only schedules. Tasks are acknowledged late and rejected when their worker
process dies, so a task is never lost; a claimed session is never run twice, since only
the task that claims it from `queued` runs it. A worker that died mid-session leaves
its session `running` with a heartbeat that goes stale: every worker sweeps such
sessions (failed `worker_lost`), at start and every few seconds.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals
from flask import Flask
from sqlalchemy import func, select

from ..config import ConfigError
from ..extensions import db
from ..tables import OptimizationSession, SessionStatus
from . import executor, session_runs
from .criteria import CriteriaSchema

log = logging.getLogger("optideck.celery")

TASK_NAME = "optideck.run_session"
QUEUE = "optideck.sessions"
# Beyond the longest session a task's message may stay unacknowledged before the broker
# hands it out again, and beyond which a task is killed: the run's own watchdog stops
# the session first, at its deadline plus executor.cancel_grace_seconds.
MARGIN_SECONDS = 3600
# How long a task whose session's owner already runs as many sessions as allowed waits
# before it asks again, in poll periods.
OWNER_BUSY_POLLS = 5


def longest_session_seconds() -> int:
    """The longest run the criteria allow (max_optimization_time_minutes' upper bound):
    an administrator may raise a session's limit up to it at any time."""
    field = CriteriaSchema().fields["max_optimization_time_minutes"]
    return int(max(validator.max for validator in field.validators if hasattr(validator, "max"))) * 60


def broker_url(config: dict) -> str:
    url = config["executor"]["broker_url"] or config["redis"]["url"]
    if not url:
        raise ConfigError('executor.backend = "celery" needs executor.broker_url or redis.url (the broker)')
    return url


def make_celery(app: Flask) -> Celery:
    """The Celery app of this Flask app, with its one task."""
    config = app.config["OPTIDECK"]
    settings = config["executor"]
    hard_limit = longest_session_seconds() + int(settings["cancel_grace_seconds"]) + MARGIN_SECONDS // 2
    celery = Celery("optideck", broker=broker_url(config), set_as_current=False)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings["max_workers"],
        task_time_limit=hard_limit,
        broker_transport_options={"visibility_timeout": hard_limit + MARGIN_SECONDS // 2},
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_ignore_result=True,
        # A web request queues a task: a broker that is down fails it in seconds, not minutes.
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )

    @celery.task(name=TASK_NAME, bind=True, max_retries=None)
    def run_session(task: Any, session_id: int) -> None:
        if not executor.run_one(app, session_id):
            raise task.retry(countdown=settings["poll_seconds"] * OWNER_BUSY_POLLS)

    return celery


class CeleryQueue:
    """The web process's side: queue a task per session; run nothing."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.celery = make_celery(app)
        self.concurrency = app.config["OPTIDECK"]["executor"]["max_workers"]

    def start(self) -> None:
        """Nothing to start: Celery workers run the sessions."""

    def wake(self) -> None:
        """Nothing to wake: a task reads the cancel flag itself every poll_seconds."""

    def submit(self, session_id: int) -> None:
        try:
            self.celery.send_task(TASK_NAME, args=[session_id], retry=True)
        except Exception as exc:  # noqa: BLE001 - any broker fault: the session must not wait forever
            log.error("session %s: could not queue its task: %s", session_id, exc)
            session_runs.record_failed(
                session_id, "worker_lost", "The work queue could not be reached; start the session again."
            )

    def status(self) -> dict:
        # Celery's own count of workers costs a broadcast and a wait: the capacity shown
        # is one worker's concurrency.
        running = db.session.scalar(
            select(func.count()).where(OptimizationSession.status == SessionStatus.RUNNING.value)
        )
        return {"busy": running or 0, "capacity": self.concurrency}

    def shutdown(self, timeout: float = 10.0) -> None:
        self.celery.close()


def requeue_waiting(celery: Celery) -> int:
    """A task for every queued session: a web process may have died between committing a
    session and queueing its task. A session with two tasks still runs once."""
    waiting = db.session.scalars(
        select(OptimizationSession.id).where(OptimizationSession.status == SessionStatus.QUEUED.value)
    ).all()
    for session_id in waiting:
        celery.send_task(TASK_NAME, args=[session_id])
    return len(waiting)


def run_worker(app: Flask, loglevel: str = "INFO") -> None:
    """Run a Celery worker for this app in this process until it is stopped."""
    celery = app.extensions["optideck.executor"].celery
    heartbeat_timeout = app.config["OPTIDECK"]["executor"]["heartbeat_timeout_seconds"]
    sweep_seconds = min(executor.STALE_SWEEP_SECONDS, heartbeat_timeout / 2)
    stopping = threading.Event()

    def sweep() -> None:
        with app.app_context():
            while True:
                try:
                    lost = session_runs.fail_stale(heartbeat_timeout)
                    if lost:
                        log.warning("sessions %s: their worker stopped reporting; failed worker_lost", lost)
                except Exception:  # the sweep must outlive a database outage
                    log.exception("stale-session sweep failed")
                    db.session.rollback()
                finally:
                    db.session.remove()
                if stopping.wait(sweep_seconds):
                    return

    @signals.worker_ready.connect(weak=False)
    def on_ready(**_: Any) -> None:
        with app.app_context():
            try:
                requeued = requeue_waiting(celery)
                if requeued:
                    log.info("queued a task for %d waiting sessions", requeued)
            finally:
                db.session.remove()
        threading.Thread(target=sweep, name="optideck-stale-sweep", daemon=True).start()

    @signals.worker_process_init.connect(weak=False)
    def on_fork(**_: Any) -> None:
        # A pool process is a fork: the parent's pooled connections are not its to use.
        with app.app_context():
            db.engine.dispose(close=False)

    @signals.worker_shutdown.connect(weak=False)
    def on_shutdown(**_: Any) -> None:
        stopping.set()

    # Named by pid: several workers on one host stay apart.
    celery.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--hostname=optideck-{os.getpid()}@%h",
            "--pool=prefork",
            "--without-mingle",
            "--without-gossip",
        ]
    )
