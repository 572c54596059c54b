"""The engine's worker process: what runs inside the sandbox (services/sandbox.py).

Started as `python -I -m webapp.engine.worker`. It speaks JSON lines, never pickle: the
parent must not run anything a worker (which handles hostile files) could craft.

- stdin, parent to worker: one job, then optionally the line "cancel". End of input also
  means cancel (the parent went away).
- stdout, worker to parent: messages, each a JSON array. What libraries print goes to
  stderr, which the parent logs.

Jobs: {"kind": "analyse", ...} answers ["result", analysis] or ["failed", type, message].
{"kind": "session", ...SessionJob} answers ["progress", pct, step], ["event", kind, step,
message, data], ["phase", name], ["beat"], then one of ["completed", outcome],
["cancelled"] or ["failed", error_type, message].

The process starts before its job is known: it loads the engine's libraries, then waits,
so a session does not pay for interpreter start-up and imports (the executor keeps one
such spare). Only the standard library is imported at the top: thread counts for torch,
ONNX Runtime and BLAS come from the environment the sandbox sets before those load.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

BEAT_SECONDS = 1.0


class Channel:
    """The protocol's two ends, and the cancel flag the parent raises through stdin."""

    def __init__(self):
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)  # from now on, print() and libraries write to stderr
        sys.stdout = sys.stderr
        self._lock = threading.Lock()
        self.cancel = threading.Event()
        self._last_beat = 0.0

    def receive_job(self) -> dict | None:
        line = sys.stdin.readline()
        if not line:
            return None  # an unused spare, let go
        threading.Thread(target=self._watch_stdin, daemon=True, name="cancel-watch").start()
        return json.loads(line)

    def _watch_stdin(self) -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        self.cancel.set()  # "cancel", or the parent closed our stdin

    def send(self, *message) -> None:
        text = json.dumps(message, default=_plain)
        with self._lock:
            self._out.write(text + "\n")

    def checkpoint(self) -> bool:
        """Called between units of work: tells the parent the worker is not stuck (at
        most once a second), and says whether to stop."""
        now = time.monotonic()
        if now - self._last_beat >= BEAT_SECONDS:
            self._last_beat = now
            self.send("beat")
        return self.cancel.is_set()


def _plain(value):
    """numpy scalars and arrays, and paths, as JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _failure(exc: BaseException, limits: dict) -> tuple[str, str]:
    from .errors import EngineError, ResourceLimit, out_of_memory, public_message

    if out_of_memory(exc):
        exc = ResourceLimit(
            "The model needed more memory than the sandbox allows "
            f"({limits.get('memory_mb', '?')} MB, sandbox.memory_mb)."
        )
    if isinstance(exc, EngineError):
        return exc.kind, exc.message
    return "internal_error", f"{type(exc).__name__}: {public_message(exc)}"


def _analyse(job: dict, channel: Channel) -> None:
    from pathlib import Path

    from .analysis import analyse

    analysis = analyse(
        Path(job["model_path"]),
        job["threads"],
        job.get("input_shape"),
        Path(job["eval_data_path"]) if job.get("eval_data_path") else None,
        job["limits"]["max_unpacked_bytes"],
        job["latency_seconds"],
    )
    channel.send("result", analysis)


def _verify(job: dict, channel: Channel) -> None:
    """Is each file (every `*_path` of the job) one plain ONNX file, of ONNX Runtime's
    operators, naming no other file?"""
    from .errors import ModelRejected
    from .screening import check_output

    for key, path in sorted(job.items()):
        if not key.endswith("_path"):
            continue
        try:
            check_output(path)
        except ModelRejected as exc:
            raise ModelRejected(f"{key.removesuffix('_path')}: {exc.message}") from exc
    channel.send("result", {"ok": True})


def _session(job: dict, channel: Channel) -> None:
    from .errors import Cancelled
    from .runner import SessionJob, run_session

    fields = {key: value for key, value in job.items() if key not in ("kind", "limits")}
    try:
        outcome = run_session(
            SessionJob(**fields, max_unpacked_bytes=job["limits"]["max_unpacked_bytes"]),
            progress=lambda pct, step: channel.send("progress", pct, step),
            event=lambda kind, step, message, data: channel.send("event", kind, step, message, data),
            cancelled=channel.checkpoint,
            phase=lambda name: channel.send("phase", name),
        )
    except Cancelled:
        channel.send("cancelled")
        return
    channel.send("completed", {"results": outcome.results, "steps": outcome.steps})


def main() -> None:
    channel = Channel()
    kind = os.environ.get("OPTIDECK_WORKER_KIND", "session")
    if kind == "session":
        from .runner import warm_up

        warm_up()
    job = channel.receive_job()
    if job is None:
        return
    if job.get("kind") == "probe":  # the sandbox checking that a worker starts at all
        channel.send("ready")
        return
    try:
        {"analyse": _analyse, "verify": _verify, "session": _session}[job["kind"]](job, channel)
    except Exception as exc:  # report every failure, typed; never hang the parent
        error_type, message = _failure(exc, job.get("limits", {}))
        if error_type == "internal_error":
            traceback.print_exc()
        channel.send("failed", error_type, message)


if __name__ == "__main__":
    main()
