import threading
from contextlib import contextmanager

import pytest
from werkzeug.serving import make_server


@contextmanager
def serving(app):
    """A real (werkzeug) server of this app, threaded like gunicorn's gthread; its address."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture
def live(app):
    with serving(app) as address:
        yield address
