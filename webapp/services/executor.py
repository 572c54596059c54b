"""The local executor: one spawned process per session, at most N at once.

A dispatcher thread in the web process claims queued sessions, starts their
workers, turns the workers' messages into database rows and notifications
(through the optimization service), enforces cancel and time limits, and fails
sessions whose worker died. Spawn, never fork: a fork after torch or ONNX
Runtime started their thread pools can deadlock the child.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from ..engine import worker
from ..extensions import db
from . import optimization

log = logging.getLogger("optideck.executor")

STALE_SWEEP_SECONDS = 10.0


@dataclass
class _Worker:
    """A started worker process waiting for its one job."""

    process: multiprocessing.process.BaseProcess
    conn: object
    cancel: object
    threads: int


@dataclass
class _Running:
    session_id: int
    process: multiprocessing.process.BaseProcess
    conn: object
    cancel: object
    deadline: float
    cancel_sent_at: float | None = None
    finished: bool = False
    messages: list = field(default_factory=list)


def _coalesced(messages: list[tuple]) -> list[tuple]:
    """Drop progress and heartbeat messages a later one in the same batch supersedes:
    each costs a database write, and only the newest says anything."""
    kept, seen = [], set()
    for message in reversed(messages):
        if message[0] in ("progress", "heartbeat"):
            if message[0] in seen:
                continue
            seen.add(message[0])
        kept.append(message)
    return kept[::-1]


class LocalExecutor:
    def __init__(self, app):
        self.app = app
        settings = app.config["OPTIDECK"]["executor"]
        self.max_workers = settings["max_workers"]
        self.poll = settings["poll_seconds"]
        self.grace = settings["cancel_grace_seconds"]
        self.heartbeat_timeout = settings["heartbeat_timeout_seconds"]
        self._context = multiprocessing.get_context("spawn")
        self._running: dict[int, _Running] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self._spare: _Worker | None = None

    # Public interface ----------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="optideck-executor")
                self._thread.start()

    def wake(self) -> None:
        self.start()
        self._wake.set()

    def worker_pid(self, session_id: int) -> int | None:
        running = self._running.get(session_id)
        return running.process.pid if running else None

    def status(self) -> dict:
        return {"busy": len(self._running), "capacity": self.max_workers}

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop dispatching; workers still running are stopped and their sessions failed."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self.app.app_context():
            for running in list(self._running.values()):
                running.process.kill()
                running.process.join(5)
                optimization.record_failed(running.session_id, "worker_lost",
                                           "The server shut down while the session ran.")
                self._forget(running)
            db.session.remove()
        self._drop_spare()

    # Worker processes ------------------------------------------------------

    def _start_worker(self, threads: int) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        cancel = self._context.Event()
        process = self._context.Process(target=worker.session_main,
                                        args=(child_end, cancel, threads), daemon=True,
                                        name="optideck-session-worker")
        try:
            process.start()
        finally:
            child_end.close()
        return _Worker(process, parent_end, cancel, threads)

    def _take_worker(self, threads: int) -> _Worker:
        """The warm spare when it fits, else a new process; then a new spare."""
        spare, self._spare = self._spare, None
        if spare is None or spare.threads != threads or not spare.process.is_alive():
            if spare is not None:
                self._kill(spare)
            spare = self._start_worker(threads)
        if not self._stop.is_set():
            self._spare = self._start_worker(threads)
        return spare

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            self._kill(spare)

    @staticmethod
    def _kill(item) -> None:
        item.conn.close()
        item.process.kill()
        item.process.join(5)

    # The dispatcher thread -------------------------------------------------

    def _loop(self) -> None:
        with self.app.app_context():
            optimization.fail_stale(self.heartbeat_timeout)
            # Warm one worker now, so that the first session starts at once too.
            self._spare = self._start_worker(self.app.config["OPTIDECK"]["criteria"]["threads"])
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
            optimization.fail_stale(self.heartbeat_timeout, set(self._running))
        if not self._running:
            self._wake.wait(self.poll)
            self._wake.clear()

    def _dispatch(self) -> None:
        while len(self._running) < self.max_workers and not self._stop.is_set():
            session = optimization.claim_next()
            if session is None:
                return
            job = optimization.job_for(session)
            try:
                taken = self._take_worker(int(job["criteria"]["threads"]))
                taken.conn.send(job)
            except OSError as exc:
                optimization.record_failed(session.id, "worker_lost",
                                           f"Could not start a worker: {exc}")
                continue
            self._running[session.id] = _Running(session.id, taken.process, taken.conn,
                                                 taken.cancel, job["deadline"])
            log.info("session %s runs in worker pid %s", session.id, taken.process.pid)

    def _receive(self, timeout: float) -> None:
        by_conn = {running.conn: running for running in self._running.values()}
        if not by_conn:
            return
        for conn in wait(list(by_conn), timeout=timeout):
            running = by_conn[conn]
            messages = []
            try:
                while conn.poll():
                    messages.append(conn.recv())
            except (EOFError, OSError):
                pass  # the worker closed its end; _reap decides what that means
            for message in _coalesced(messages):
                self._handle(running, message)

    def _handle(self, running: _Running, message: tuple) -> None:
        kind, *args = message
        session_id = running.session_id
        if kind == "progress":
            optimization.record_progress(session_id, *args)
        elif kind == "event":
            optimization.record_event(session_id, *args)
        elif kind == "heartbeat":
            optimization.record_heartbeat(session_id)
        elif kind == "completed":
            running.finished = True
            optimization.record_completed(session_id, args[0])
        elif kind == "failed":
            running.finished = True
            optimization.record_failed(session_id, *args)
        elif kind == "cancelled":
            running.finished = True
            optimization.record_cancelled(session_id)

    def _reap(self) -> None:
        for running in list(self._running.values()):
            if running.process.is_alive():
                continue
            try:
                while running.conn.poll():
                    self._handle(running, running.conn.recv())
            except (EOFError, OSError):
                pass
            if not running.finished:
                if running.cancel_sent_at is not None:
                    optimization.record_cancelled(running.session_id)
                else:
                    optimization.record_failed(
                        running.session_id, "worker_lost",
                        f"The worker process died (exit code {running.process.exitcode}).")
            self._forget(running)

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for session_id in optimization.cancel_requests(list(self._running)):
            running = self._running[session_id]
            if running.cancel_sent_at is None:
                running.cancel.set()
                running.cancel_sent_at = now
        for running in list(self._running.values()):
            overdue = running.cancel_sent_at is not None and now - running.cancel_sent_at > self.grace
            if overdue and running.process.is_alive():
                log.warning("session %s ignored cancel; killing pid %s",
                            running.session_id, running.process.pid)
                running.process.kill()
            elif time.time() > running.deadline + self.grace and running.process.is_alive():
                running.process.kill()
                running.process.join(5)
                running.finished = True
                optimization.record_failed(running.session_id, "timeout",
                                           "The session ran past its time limit and was stopped.")

    def _forget(self, running: _Running) -> None:
        self._running.pop(running.session_id, None)
        running.conn.close()
        optimization.clean_work_dir(running.session_id)
