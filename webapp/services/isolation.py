"""Run one function in a fresh spawned process, with a time limit.

Uploads are opened only this way: a file that crashes or hangs its loader
takes down a throwaway process, never the web server.
"""

from __future__ import annotations

import multiprocessing
import traceback

from ..engine.errors import EngineError


class IsolatedFailure(Exception):
    """The function failed in a way the user can act on; `kind` and message say how."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def _child(conn, func, args):
    try:
        conn.send(("ok", func(*args)))
    except EngineError as exc:
        conn.send(("error", exc.kind, exc.message))
    except Exception as exc:  # anything else is our bug or a library's: say so plainly
        traceback.print_exc()
        conn.send(("error", "internal_error", f"{type(exc).__name__}: {exc}"[:500]))
    finally:
        conn.close()


def run_isolated(func, args: tuple, timeout: float, initializer=None, init_args: tuple = ()):
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_run, args=(sender, func, args, initializer, init_args),
                              daemon=True, name="optideck-analysis")
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise IsolatedFailure("timeout", f"Analysing the upload took longer than {timeout:g} s.")
        try:
            message = receiver.recv()
        except EOFError as exc:
            raise IsolatedFailure("crashed", "Opening the file crashed the analyser; the file "
                                  "is damaged or not a model.") from exc
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        receiver.close()
    if message[0] == "ok":
        return message[1]
    raise IsolatedFailure(message[1], message[2])


def _run(conn, func, args, initializer, init_args):
    if initializer is not None:
        initializer(*init_args)
    _child(conn, func, args)
