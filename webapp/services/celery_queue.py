"""Sessions run by Celery workers (`[executor] backend = "celery"`), Redis the broker.

A web process queues a task naming the session once the session is committed, and runs
no executor. A worker (`flask --app webapp worker`) runs each task's session with the
same supervision as the local executor (executor.run_one): the sandbox runs the model,
Celery only schedules. Tasks are acknowledged late and rejected when their worker
process dies, so a task is never lost; a claimed session is never run twice, since only
the task that claims it from `queued` runs it. A worker that died mid-session leaves
its session `running` with a heartbeat that goes stale: every worker and every web
process sweeps such sessions (failed `worker_lost`) every few seconds, so none is left
running even when no worker is alive.

Each worker announces itself on Redis under a key that expires unless renewed
(WorkerRegistry): the capacity web processes report is the sum over the live workers,
read in one round trip instead of Celery's broadcast-and-wait inspection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis
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
WORKERS_KEY = "optideck:celery:workers"
WORKER_KEY_PREFIX = "optideck:celery:worker:"
# The System page and system_status read the live workers this often at most per process.
WORKERS_READ_SECONDS = 1.0
# A worker renews its key every sweep; the key outlives a few missed renewals, so a busy
# machine does not drop a live worker from the count, and a dead one leaves it soon.
WORKER_KEY_RENEWALS = 3


def longest_session_seconds() -> int:
    """The longest run the criteria allow (max_optimization_time_minutes' upper bound):
    an administrator may raise a session's limit up to it at any time."""
    field = CriteriaSchema().fields["max_optimization_time_minutes"]
    return int(max(validator.max for validator in field.validators if hasattr(validator, "max"))) * 60


def sweep_seconds(config: dict) -> float:
    """How often stale sessions are swept: a quarter of the heartbeat timeout, so a session
    whose worker died is failed within about 1.25 timeouts."""
    return min(executor.STALE_SWEEP_SECONDS, config["executor"]["heartbeat_timeout_seconds"] / 4)


def _sweep_until(app: Flask, stopping: threading.Event) -> None:
    """Fail stale sessions every sweep period until `stopping` is set."""
    heartbeat_timeout = app.config["OPTIDECK"]["executor"]["heartbeat_timeout_seconds"]
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
            if stopping.wait(sweep_seconds(app.config["OPTIDECK"])):
                return


class WorkerRegistry:
    """The live Celery workers: a sorted set of names scored by when each announcement
    expires, and one key per worker holding its record (name, host, pid, concurrency,
    started), both renewed every sweep. Reading it costs three round trips, whatever else
    the Redis database holds."""

    def __init__(self, url: str, ttl_seconds: float) -> None:
        # Short timeouts: the System page and system_status read it, and must not hang on
        # a Redis outage.
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.ttl = max(1, round(ttl_seconds))

    def announce(self, name: str, concurrency: int, started: float) -> None:
        record = {
            "name": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": concurrency,
            "started": started,
        }
        pipe = self.client.pipeline()
        pipe.set(WORKER_KEY_PREFIX + name, json.dumps(record), ex=self.ttl)
        pipe.zadd(WORKERS_KEY, {name: time.time() + self.ttl})
        pipe.execute()

    def withdraw(self, name: str) -> None:
        pipe = self.client.pipeline()
        pipe.delete(WORKER_KEY_PREFIX + name)
        pipe.zrem(WORKERS_KEY, name)
        pipe.execute()

    def live(self) -> list[dict]:
        pipe = self.client.pipeline()
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", time.time())
        pipe.zrange(WORKERS_KEY, 0, -1)
        names = pipe.execute()[1]
        if not names:
            return []
        records = self.client.mget([WORKER_KEY_PREFIX.encode() + name for name in names])
        # A key may expire between the two reads; a record not of this shape is skipped.
        return [found for raw in records if raw is not None and (found := _worker_record(raw))]


def _worker_record(raw: bytes | str) -> dict | None:
    """A worker's record as announce() writes it, or None (logged) for anything else."""
    try:
        record = json.loads(raw)
        if (
            isinstance(record, dict)
            and all(isinstance(record.get(k), str) for k in ("name", "host"))
            and all(type(record.get(k)) is int and record[k] > 0 for k in ("pid", "concurrency"))
            and isinstance(record.get("started"), int | float)
            and 0 < record["started"] < 1e11
        ):
            return record
    except ValueError:
        pass
    log.warning("a Celery worker record on Redis is not one this version writes; it is left out")
    return None


def registry_for(config: dict) -> WorkerRegistry | None:
    """The registry on redis.url, else on a Redis broker; None with another broker."""
    url = config["redis"]["url"] or broker_url(config)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return WorkerRegistry(url, sweep_seconds(config) * WORKER_KEY_RENEWALS)


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
        # A session is claimed in the database, so a task redelivered after a broker outage
        # never runs it twice; cancelling running tasks on a lost connection would instead
        # fail every session over a Redis restart.
        worker_cancel_long_running_tasks_on_connection_loss=False,
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
    """The web process's side: queue a task per session, sweep sessions whose worker
    died; run nothing."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.celery = make_celery(app)
        self.concurrency = app.config["OPTIDECK"]["executor"]["max_workers"]
        self.registry = registry_for(app.config["OPTIDECK"])
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._workers_lock = threading.Lock()
        self._workers_read: tuple[float, list[dict] | None] = (-WORKERS_READ_SECONDS, None)

    def start(self) -> None:
        """Sweep stale sessions: Celery workers run the sessions, but when every worker is
        dead none is left to notice that its session will never finish."""
        if self._sweeper is None or not self._sweeper.is_alive():
            self._stopping.clear()
            self._sweeper = threading.Thread(
                target=_sweep_until, args=(self.app, self._stopping), name="optideck-stale-sweep", daemon=True
            )
            self._sweeper.start()

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

    def workers(self) -> list[dict] | None:
        """The live workers, or None when they cannot be counted (another broker than
        Redis, or Redis unreachable); read at most once per WORKERS_READ_SECONDS."""
        if self.registry is None:
            return None
        with self._workers_lock:
            read_at, found = self._workers_read
            if time.monotonic() - read_at < WORKERS_READ_SECONDS:
                return found
            try:
                found = self.registry.live()
            except (redis.RedisError, OSError) as exc:
                log.warning("could not read the live Celery workers: %s", exc)
                found = None
            self._workers_read = (time.monotonic(), found)
            return found

    def status(self) -> dict:
        running = db.session.scalar(
            select(func.count()).where(OptimizationSession.status == SessionStatus.RUNNING.value)
        )
        workers = self.workers()
        # Uncountable: one worker's concurrency, the least a working deployment has.
        capacity = self.concurrency if workers is None else sum(w["concurrency"] for w in workers)
        return {"busy": running or 0, "capacity": capacity}

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout)
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
    queue = app.extensions["optideck.executor"]
    celery = queue.celery
    stopping = threading.Event()
    # Named by pid: several workers on one host stay apart.
    name = f"optideck-{os.getpid()}@{socket.gethostname()}"
    started = time.time()

    def announce_until_stopped() -> None:
        """Renew this worker's announcement every sweep period, in a thread of its own: a
        sweep waiting on a row lock must not let the worker drop off the count."""
        while not stopping.is_set():
            try:
                queue.registry.announce(name, queue.concurrency, started)
            except (redis.RedisError, OSError) as exc:  # Redis restarting: the next one renews it
                log.warning("could not announce this worker: %s", exc)
            stopping.wait(sweep_seconds(app.config["OPTIDECK"]))

    threads: list[threading.Thread] = []

    @signals.worker_ready.connect(weak=False)
    def on_ready(**_: Any) -> None:
        with app.app_context():
            try:
                requeued = requeue_waiting(celery)
                if requeued:
                    log.info("queued a task for %d waiting sessions", requeued)
            finally:
                db.session.remove()
        threads.append(threading.Thread(target=_sweep_until, args=(app, stopping), daemon=True))
        if queue.registry is not None:
            threads.append(threading.Thread(target=announce_until_stopped, daemon=True))
        for thread in threads:
            thread.start()

    @signals.worker_process_init.connect(weak=False)
    def on_fork(**_: Any) -> None:
        # A pool process is a fork: the parent's pooled connections are not its to use.
        with app.app_context():
            db.engine.dispose(close=False)

    @signals.worker_shutdown.connect(weak=False)
    def on_shutdown(**_: Any) -> None:
        stopping.set()
        for thread in threads:
            thread.join(5)  # an announcement on its way must not outlive the withdrawal
        if queue.registry is not None:
            # On failure its key expires by itself.
            with contextlib.suppress(redis.RedisError, OSError):
                queue.registry.withdraw(name)

    celery.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--hostname={name}",
            "--pool=prefork",
            "--without-mingle",
            "--without-gossip",
        ]
    )
