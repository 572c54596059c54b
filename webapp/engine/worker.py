"""Entry points of the worker processes (spawned, never forked).

Only the standard library is imported at the top: thread counts for torch,
ONNX Runtime and BLAS must be in the environment before those libraries load,
so that concurrent sessions do not each grab every core.
"""

from __future__ import annotations

import os
import threading
import traceback

HEARTBEAT_SECONDS = 2.0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int) -> None:
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def analyse_upload(path: str, threads: int, input_shape=None, eval_path: str | None = None) -> dict:
    """Runs in the analysis pool; raises EngineError subclasses for the caller to show."""
    from pathlib import Path

    from .analysis import analyse

    return analyse(Path(path), threads, input_shape, Path(eval_path) if eval_path else None)


def session_main(conn, cancel_event, threads: int) -> None:
    """Run one session, reporting over `conn`; the parent owns the database.

    The process starts before its session is known: it loads the engine's
    libraries, then waits for the job on `conn`, so a session does not pay
    for interpreter start-up and imports (the executor keeps one such spare).
    Then: ("progress", pct, step), ("event", kind, step, message, data),
    ("heartbeat",), and exactly one of ("completed", outcome), ("cancelled",),
    ("failed", error_type, message). A process that dies without one of those
    is reported by the parent as `worker_lost`.
    """
    limit_threads(threads)
    from .errors import Cancelled, EngineError
    from .runner import SessionJob, run_session, warm_up

    warm_up()
    try:
        job = conn.recv()
    except (EOFError, OSError):
        return  # an unused spare, let go
    lock = threading.Lock()
    stop = threading.Event()

    def send(*message):
        with lock:
            conn.send(message)

    def beat():
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                send("heartbeat")
            except OSError:  # the pipe closed as the session ended
                return

    threading.Thread(target=beat, daemon=True, name="heartbeat").start()
    try:
        outcome = run_session(
            SessionJob(**job),
            progress=lambda pct, step: send("progress", pct, step),
            event=lambda kind, step, message, data: send("event", kind, step, message, data),
            cancelled=cancel_event.is_set,
        )
    except Cancelled:
        send("cancelled")
    except EngineError as exc:
        send("failed", exc.kind, exc.message)
    except Exception as exc:  # a bug or a library failure: report it, do not hang
        send("failed", "internal_error", f"{type(exc).__name__}: {exc}"[:500])
        traceback.print_exc()
    else:
        send("completed", {"results": outcome.results, "artifact_path": outcome.artifact_path,
                           "steps": outcome.steps})
    finally:
        stop.set()
        with lock:
            conn.close()
