"""Gunicorn settings `flask serve` passes with `-c python:webapp.gunicorn_conf`.

On a graceful stop (SIGTERM) gunicorn waits for the requests in flight, and
each open WebSocket is one that never ends by itself. The worker first tells
the live handlers to close with 1012, so browsers reconnect to the next server.
"""

import signal


def post_worker_init(worker):
    from webapp.live.connection import begin_shutdown

    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        begin_shutdown()
        gunicorn_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
