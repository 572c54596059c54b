"""The WSGI entry point: `gunicorn webapp.wsgi:app` (or `wsgi:app` in a checkout), or any WSGI server."""

import atexit
import sys

from . import create_app
from .config import ConfigError
from .health import log_checks, run_checks
from .live.connection import begin_shutdown
from .services import alerts

# gunicorn's "app failed to load" exit code: it stops instead of respawning a
# worker that can never start.
APP_LOAD_ERROR = 4

try:
    app = create_app()
except ConfigError as exc:
    print(exc.code, file=sys.stderr)
    raise SystemExit(APP_LOAD_ERROR) from None

with app.app_context():
    log_checks(run_checks())

# Queued sessions (from before a restart, too) start running now; sessions a
# dead server left "running" are failed as worker_lost once their heartbeat is stale.
executor = app.extensions["optideck.executor"]
executor.start()
atexit.register(executor.shutdown)
# Open WebSockets close with 1012 ("service restart") so browsers reconnect by themselves.
atexit.register(begin_shutdown)
# The API error rate this process counted but has not yet sent joins the shared window.
atexit.register(alerts.send_at_exit, app)
