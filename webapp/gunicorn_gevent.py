"""The worker `server.worker_class = "gevent"` selects: a greenlet per connection, so a
process holds thousands of open WebSockets where gthread would need a thread each.

gunicorn imports this module in its master, before the worker patches the standard
library; it must therefore import nothing that creates locks, threads or sockets
(webapp's package and config modules import nothing of the sort). The app itself
is loaded in the worker after the patch: its threads, events and queues are
greenlets and gevent's, and psycopg (3.1.14 on) waits cooperatively by itself.
"""

from __future__ import annotations

from gunicorn.workers.ggevent import GeventWorker

from .gunicorn_conf import ApiErrors


class ApiErrorGeventWorker(ApiErrors, GeventWorker):
    """gevent, with gunicorn's own refusals under /api/ in the API's JSON body."""
