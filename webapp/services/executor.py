"""Running sessions: one sandboxed worker per session, watched until it ends.

`Supervisor` watches sessions' workers: it starts one in the sandbox
(services/sandbox.py), turns its messages into database rows and notifications
(through the optimization service), and enforces cancel, the time limit, a model that
stalls in one inference or one step, a worker writing too much, and a worker that
dies. Two schedulers use it. `LocalExecutor`, the embedded default, is a dispatcher
thread in the web process that claims queued sessions (at most
`executor.max_running_per_user` of one user at a time) and watches up to
`executor.max_workers` of them at once; `run_one` runs the one session a Celery task
names (services/celery_queue.py). Workers are fresh interpreters, never forks: a fork
after torch or ONNX Runtime started their thread pools can deadlock the child.
"""

from __future__ import annotations

import json
import logging
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from flask import Flask

from ..engine.errors import scrub_paths
from ..engine.runner import ARTIFACT_NAME
from ..engine.search_runner import candidate_name
from ..extensions import db
from ..tables import OptimizationSession, SessionStatus, utcnow
from . import artifacts, model_store, session_runs
from .errors import ServiceError
from .sandbox import SandboxError, Worker

log = logging.getLogger("optideck.executor")

STALE_SWEEP_SECONDS = 10.0
# A worker's timeline: the lines the runner writes, at most this many per session, each
# carrying at most this much data (its measurement and the step's details).
EVENT_KINDS = {
    "baseline",
    "step_started",
    "step_completed",
    "step_skipped",
    "step_rolled_back",
    "search_planned",
    "search_probe",
    "search_stopped",
}
MAX_EVENTS = 500
MAX_EVENT_DATA = 64 << 10
OUTPUT_CHECK_SECONDS = 2.0
# How often a live worker's session has its heartbeat written (what tells other processes,
# and this one after a restart, that the session is not orphaned).
HEARTBEAT_SECONDS = 5.0


def _coalesced(messages: list[list]) -> list[list]:
    """Drop progress and beat messages a later one in the same batch supersedes:
    each progress costs a database write, and only the newest says anything."""
    kept, seen = [], set()
    for message in reversed(messages):
        if message[0] in ("progress", "beat"):
            if message[0] in seen:
                continue
            seen.add(message[0])
        kept.append(message)
    return kept[::-1]


@dataclass
class _Running:
    """One session's worker and the watchdog's view of it."""

    session_id: int
    worker: Worker
    deadline: float
    cancel_sent_at: float | None = None
    finished: bool = False
    # The watchdog's view: what the worker does now, and since when.
    phase: str = "transform"
    last_beat: float = field(default_factory=time.monotonic)
    step: str = ""
    step_started: float = field(default_factory=time.monotonic)
    output_checked: float = field(default_factory=time.monotonic)
    heartbeat_written: float = 0.0
    events: int = 0


class Supervisor:
    """The limits sessions' workers are watched with, from [executor] and [sandbox]."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        settings = app.config["OPTIDECK"]["executor"]
        self.per_user = settings["max_running_per_user"]
        self.poll = settings["poll_seconds"]
        self.grace = settings["cancel_grace_seconds"]
        self.heartbeat_timeout = settings["heartbeat_timeout_seconds"]
        self.inference_timeout = settings["inference_timeout_seconds"]
        self.step_timeout = settings["step_timeout_seconds"]
        self.sandbox = app.extensions["optideck.sandbox"]
        self.output_limit = self.sandbox.limits.file_bytes

    def launch(self, session: OptimizationSession, start_worker: Callable[[int], Worker]) -> _Running | None:
        """Give a claimed session's job to a worker from `start_worker(threads)`; None
        when no worker could take it (the session is failed)."""
        try:
            job = session_runs.job_for(session)
        except FileNotFoundError:
            session_runs.record_failed(
                session.id, "storage_error", "The model's file is missing from storage."
            )
            return None
        except ServiceError as exc:  # a bucket store that cannot be reached
            session_runs.record_failed(session.id, "storage_error", exc.message)
            return None
        # Building the job may have fetched the files from a bucket: the clock restarts now.
        session_runs.record_heartbeat(session.id)
        worker = None
        try:
            worker = start_worker(int(job["criteria"]["threads"]))
            job["model_path"] = str(worker.place(Path(job["model_path"]), "model"))
            if job["eval_data_path"]:
                job["eval_data_path"] = str(worker.place(Path(job["eval_data_path"]), "eval.npz"))
            job.update(kind="session", work_dir=worker.out_path(), limits=self.sandbox.limits.for_job())
            worker.send(job)
        except OSError as exc:
            if worker is not None:
                worker.close()
            session_runs.record_failed(
                session.id, "worker_lost", f"Could not start a worker: {exc.strerror or exc}"
            )
            return None
        log.info("session %s runs in sandboxed worker pid %s", session.id, worker.pid)
        return _Running(session.id, worker, job["deadline"])

    def _receive_one(self, running: _Running) -> None:
        """Handle what the worker wrote (call when its pipe is readable)."""
        try:
            messages = running.worker.receive()
        except SandboxError as exc:
            self._fail(running, "worker_lost", f"The worker was stopped: {exc}.")
            return
        for message in _coalesced(messages):
            if running.finished:
                break
            # A worker handles a hostile file: whatever its messages hold, only its own
            # session fails, and the executor goes on for everyone else.
            try:
                self._handle(running, message)
            except Exception as exc:  # noqa: BLE001 - see above
                db.session.rollback()
                log.warning(
                    "session %s: worker message %r refused: %s", running.session_id, str(message)[:200], exc
                )
                self._fail(running, "worker_lost", "The worker broke the protocol and was stopped.")

    def _handle(self, running: _Running, message: list) -> None:
        kind, *args = message
        session_id = running.session_id
        running.last_beat = time.monotonic()
        if kind == "progress":
            pct, step = float(args[0]), str(args[1])[:64]
            if step != running.step:
                running.step, running.step_started = step, time.monotonic()
            session_runs.record_progress(session_id, pct, step)
        elif kind == "event":
            running.events += 1
            if running.events > MAX_EVENTS or args[0] not in EVENT_KINDS:
                return  # more than a session's timeline, or not a line of it
            data = args[3] if isinstance(args[3], dict) else {}
            if len(json.dumps(data)) > MAX_EVENT_DATA:
                data = {"omitted": "larger than a timeline line may carry"}
            if "candidate" in data:  # what the session page plots while a search runs
                try:
                    data["candidate"] = artifacts.clean_candidate(data["candidate"])
                except artifacts.Refused:
                    del data["candidate"]
            session_runs.record_event(
                session_id,
                str(args[0]),
                None if args[1] is None else str(args[1])[:64],
                scrub_paths(str(args[2]))[:2000],
                data,
            )
        elif kind == "phase":
            running.phase = str(args[0])
        elif kind == "completed":
            self._complete(running, args[0])
        elif kind == "failed":
            self._fail(running, str(args[0])[:32], scrub_paths(str(args[1]))[:2000])
        elif kind == "cancelled":
            running.finished = True
            session_runs.record_cancelled(session_id)
        elif kind != "beat":
            raise ValueError(f"unknown message {kind!r}")

    def _complete(self, running: _Running, outcome: dict) -> None:
        """Move the worker's artifact into storage, from the trusted side only."""
        running.finished = True
        worker = running.worker
        try:
            worker.process.wait(2)
        except subprocess.TimeoutExpired:
            worker.kill()  # it has said all it had to say
        tmp_dir = self.app.extensions["optideck.blobs"].tmp_dir
        taken: list[Path] = []
        candidates: dict[int, Path] = {}
        handed_over = False
        try:
            # Everything the worker hands back shares one output limit.
            budget = self.output_limit
            artifact = worker.take_output(ARTIFACT_NAME, tmp_dir, budget)
            taken.append(artifact)
            # A search's kept candidates, by the index its results give them.
            for index in artifacts.kept_candidates(outcome):
                budget -= taken[-1].stat().st_size
                candidates[index] = worker.take_output(candidate_name(index), tmp_dir, max(budget, 0))
                taken.append(candidates[index])
            handed_over = True
        except (SandboxError, artifacts.Refused) as exc:
            log.warning("session %s: %s", running.session_id, exc)
            session_runs.record_failed(
                running.session_id, "worker_lost", "The worker finished without a usable optimized model."
            )
            return
        finally:
            if not handed_over:  # whatever went wrong, no copy stays behind in tmp/
                for path in taken:
                    path.unlink(missing_ok=True)
        session_runs.record_completed(running.session_id, outcome, artifact, candidates)

    def _fail(self, running: _Running, error_type: str, message: str) -> None:
        running.finished = True
        running.worker.kill()
        session_runs.record_failed(running.session_id, error_type, message)

    def _reap_one(self, running: _Running) -> bool:
        """Whether the run is over (its outcome recorded); the caller then closes it."""
        worker = running.worker
        if worker.alive() and not running.finished:
            return False
        if not running.finished:
            try:
                for received in worker.receive():
                    if not running.finished:
                        self._handle(running, received)
            except (SandboxError, TypeError, ValueError, IndexError, KeyError):
                pass  # judged below, as a worker that ended without a word
        if not running.finished:
            if running.cancel_sent_at is not None:
                session_runs.record_cancelled(running.session_id)
            else:
                error_type, message = worker.exit_reason()
                log.info(
                    "session %s: worker ended: %s\n%s", running.session_id, message, worker.stderr_tail()
                )
                session_runs.record_failed(running.session_id, error_type, message)
        return True

    def _request_cancel(self, running: _Running, now: float) -> None:
        if running.cancel_sent_at is None:
            running.worker.cancel()
            running.cancel_sent_at = now

    def _enforce_one(self, running: _Running, now: float) -> None:
        """Write the heartbeat; kill a worker that ignored its cancel; apply the watchdog."""
        if running.finished or not running.worker.alive():
            return
        if now - running.heartbeat_written > HEARTBEAT_SECONDS:
            running.heartbeat_written = now
            if not session_runs.record_heartbeat(running.session_id):
                log.warning(
                    "session %s was ended by another process; stopping its worker pid %s",
                    running.session_id,
                    running.worker.pid,
                )
                running.finished = True
                running.worker.kill()
                return
        if running.cancel_sent_at is not None:
            if now - running.cancel_sent_at > self.grace:
                log.warning(
                    "session %s ignored cancel; killing pid %s", running.session_id, running.worker.pid
                )
                running.worker.kill()
            return
        problem = self._watchdog(running, now)
        if problem is not None:
            self._fail(running, *problem)

    def _watchdog(self, running: _Running, now: float) -> tuple[str, str] | None:
        limits = self
        if time.time() > running.deadline + limits.grace:
            return "timeout", "The session ran past its time limit and was stopped."
        if running.phase == "inference" and now - running.last_beat > limits.inference_timeout:
            return "stalled", (
                f"The model stopped making progress: one run of it took longer "
                f"than {limits.inference_timeout:g} s "
                "(executor.inference_timeout_seconds), so its worker was stopped."
            )
        if now - running.step_started > limits.step_timeout:
            return "stalled", (
                f"The step {running.step or 'starting'} took longer than "
                f"{limits.step_timeout:g} s (executor.step_timeout_seconds), so its "
                "worker was stopped."
            )
        if now - running.output_checked > OUTPUT_CHECK_SECONDS:
            running.output_checked = now
            if running.worker.output_bytes() > limits.output_limit:
                return "resource_limit", (
                    f"The session wrote more than "
                    f"{limits.output_limit >> 20} MB (sandbox.output_mb) and "
                    "was stopped."
                )
        return None

    def watch(self, running: _Running) -> None:
        """Watch one session's worker in this thread until the session ends."""
        try:
            while True:
                try:
                    readable, _, _ = select.select([running.worker.fileno()], [], [], self.poll)
                    if readable:
                        self._receive_one(running)
                    if self._reap_one(running):
                        return
                    now = time.monotonic()
                    if session_runs.cancel_requests([running.session_id]):
                        self._request_cancel(running, now)
                    self._enforce_one(running, now)
                except Exception:  # a fault here (a database outage) must not orphan the worker
                    log.exception("session %s: supervision failed", running.session_id)
                    db.session.rollback()
                    # Back off one poll period: a persistent fault is retried, not spun on.
                    time.sleep(self.poll)
                finally:
                    db.session.remove()
        finally:
            if not running.finished and running.worker.alive():
                # Stopped from outside (a time limit, a shutdown): the session must not stay running.
                self._fail(running, "worker_lost", "The worker running the session was stopped.")
            running.worker.close()


class LocalExecutor(Supervisor):
    def __init__(self, app: Flask) -> None:
        super().__init__(app)
        self.max_workers = app.config["OPTIDECK"]["executor"]["max_workers"]
        self._running: dict[int, _Running] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self._spare: Worker | None = None

    # Public interface ----------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, daemon=True, name="optideck-executor")
                self._thread.start()

    def wake(self) -> None:
        self.start()
        self._wake.set()

    def submit(self, session_id: int) -> None:
        """A session was queued (and committed): the dispatcher claims it from the database."""
        self.wake()

    def worker_pid(self, session_id: int) -> int | None:
        running = self._running.get(session_id)
        return running.worker.pid if running else None

    def status(self) -> dict:
        return {"busy": len(self._running), "capacity": self.max_workers}

    def workers(self) -> None:
        """No Celery workers to list: this process is the worker."""
        return None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop dispatching; workers still running are stopped and their sessions failed."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self.app.app_context():
            for running in list(self._running.values()):
                running.worker.kill()
                session_runs.record_failed(
                    running.session_id, "worker_lost", "The server shut down while the session ran."
                )
                self._forget(running)
            db.session.remove()
        self._drop_spare()

    # Worker processes ------------------------------------------------------

    def _take_worker(self, threads: int) -> Worker:
        """The warm spare when it fits, else a new worker; then a new spare."""
        spare, self._spare = self._spare, None
        if spare is None or spare.threads != threads or not spare.alive():
            if spare is not None:
                spare.close()
            spare = self.sandbox.start("session", threads)
        if not self._stop.is_set():
            self._spare = self.sandbox.start("session", threads)
        return spare

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()

    # The dispatcher thread -------------------------------------------------

    def _loop(self) -> None:
        with self.app.app_context():
            session_runs.fail_stale(self.heartbeat_timeout)
            # Warm one worker now, so that the first session starts at once too.
            self._drop_spare()
            self._spare = self.sandbox.start("session", self.app.config["OPTIDECK"]["criteria"]["threads"])
            while not self._stop.is_set():
                try:
                    self._tick()
                except Exception:  # the dispatcher must outlive any one bad tick
                    log.exception("executor tick failed")
                    db.session.rollback()
                    # Back off one poll period so a persistent fault (a database
                    # outage) is retried, not spun on.
                    time.sleep(self.poll)
                finally:
                    db.session.remove()

    def _tick(self) -> None:
        self._receive(self.poll if self._running else 0)
        self._reap()
        self._enforce_limits()
        self._dispatch()
        if time.monotonic() - self._last_sweep > STALE_SWEEP_SECONDS:
            self._last_sweep = time.monotonic()
            session_runs.fail_stale(self.heartbeat_timeout, set(self._running))
        if not self._running:
            self._wake.wait(self.poll)
            self._wake.clear()

    def _dispatch(self) -> None:
        while len(self._running) < self.max_workers and not self._stop.is_set():
            session = session_runs.claim_next(self.per_user)
            if session is None:
                return
            running = self.launch(session, self._take_worker)
            if running is not None:
                self._running[session.id] = running

    def _receive(self, timeout: float) -> None:
        by_fd = {running.worker.fileno(): running for running in self._running.values()}
        if not by_fd:
            return
        readable, _, _ = select.select(list(by_fd), [], [], timeout)
        for fd in readable:
            self._receive_one(by_fd[fd])

    def _reap(self) -> None:
        for running in list(self._running.values()):
            if self._reap_one(running):
                self._forget(running)

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for session_id in session_runs.cancel_requests(list(self._running)):
            self._request_cancel(self._running[session_id], now)
        for running in list(self._running.values()):
            self._enforce_one(running, now)

    def _forget(self, running: _Running) -> None:
        self._running.pop(running.session_id, None)
        running.worker.close()


# One session at a time, for a work queue --------------------------------------


def run_one(app: Flask, session_id: int) -> bool:
    """Run one session to its end in a sandboxed worker, watched as the local executor
    watches its own; False when it must wait (its owner runs as many sessions as allowed).

    A session already claimed or finished is left alone, so a task delivered twice never
    runs it twice; one left `running` by a worker that died is failed `worker_lost` once
    its heartbeat is stale.
    """
    with app.app_context():
        try:
            supervisor = Supervisor(app)
            _fetch_files(session_id)
            session = session_runs.claim(session_id, supervisor.per_user)
            if session is None:
                return _not_claimed(session_id, supervisor.heartbeat_timeout)
            running = supervisor.launch(session, lambda threads: supervisor.sandbox.start("session", threads))
            if running is not None:
                supervisor.watch(running)
            return True
        finally:
            db.session.remove()


def _fetch_files(session_id: int) -> None:
    """Bring a queued session's files into this host's cache before it is claimed, so a slow
    bucket delays the session's start, not its heartbeats. A failure is left for launch()
    to report."""
    session = db.session.get(OptimizationSession, session_id)
    if session is None or session.status != SessionStatus.QUEUED.value:
        return
    try:
        model_store.file_path(session.model)
        model_store.eval_path(session.model)
    except (ServiceError, FileNotFoundError):
        pass
    finally:
        db.session.rollback()  # read only: end the transaction before the claim


def _not_claimed(session_id: int, heartbeat_timeout: float) -> bool:
    session = db.session.get(OptimizationSession, session_id)
    if session is None:
        return True
    if session.status == SessionStatus.QUEUED.value:
        return False
    stale_before = utcnow() - timedelta(seconds=heartbeat_timeout)
    if session.status == SessionStatus.RUNNING.value and (
        session.heartbeat_at is None or session.heartbeat_at < stale_before
    ):
        session_runs.record_failed(
            session_id, "worker_lost", f"The worker stopped reporting for more than {heartbeat_timeout:g} s."
        )
    return True
