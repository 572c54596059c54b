"""What the live tests use: a real server of an app, a token, a connection (a script's or
a browser's), the events of one session."""

import functools
import io
import itertools
import json
import threading
import time
from contextlib import contextmanager
from importlib.metadata import version

from simple_websocket import Client, ConnectionClosed
from werkzeug.serving import make_server

from tests.helpers import make_user
from webapp.services import tokens

TERMINAL = {"session_completed", "session_failed", "session_cancelled"}


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


def token_for(username, role="operator"):
    user = make_user(username, role)
    return user, tokens.create_personal(user, "ws", 1, False).access_token


class _Client(Client):
    """simple-websocket's client, reading what came with the handshake's answer.

    Its handshake takes only the first event wsproto parsed; a server that refuses a socket
    at once sends its close frame in the same packet, which then stays unread, and the
    client reports "no status" (1005) instead of the server's code.
    """

    def handshake(self):
        super().handshake()
        self._handle_events()  # a close frame or messages already received
        self.connected = True  # its reader thread starts, meets the end and says closed


def open_socket(url, headers=None):
    """A client whose reader thread cannot keep pytest alive when a test fails before
    closing it."""
    daemon = functools.partial(threading.Thread, daemon=True)
    return _Client.connect(url, headers=headers, thread_class=daemon)


def connect(live, token=None, path="/api/v1/ws", **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return open_socket(f"ws://{live}{path}", headers)


def browser_socket(live, path, cookie):
    """A socket as the page's browser opens it. Same cookie, same user agent: flask-login's
    strong session protection checks both. (simple-websocket sends Host without the port,
    so the page's origin has none either.)"""
    return open_socket(
        f"ws://{live}{path}",
        headers={
            "Cookie": f"session={cookie.value}",
            "Origin": "http://127.0.0.1",
            "User-Agent": f"Werkzeug/{version('werkzeug')}",
        },
    )


def receive_json(ws, timeout=10):
    message = ws.receive(timeout=timeout)
    assert message is not None, "no message in time"
    return json.loads(message)


def closed_within(ws, seconds=5.0):
    """Read until the server closes the socket: (close code, reason, messages before it)."""
    seen = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            message = ws.receive(timeout=0.1)
            if message is not None:
                seen.append(message)
    except ConnectionClosed:
        return ws.close_reason, ws.close_message, seen
    raise AssertionError(f"still open after {seconds}s; got {seen}")


_uploads = itertools.count(1)


def upload_model(app, token, demo_files) -> int:
    """A new model each call (the same file under the same name would be the same model)."""
    model = app.test_client().post(
        "/api/v1/models",
        headers={"Authorization": f"Bearer {token}"},
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(demo_files["onnx"].read_bytes()), "m.onnx"), "name": f"m{next(_uploads)}"},
    )
    assert model.status_code == 201, model.get_json()
    return model.get_json()["model_id"]


def start_on(app, token, model_id) -> int:
    session = app.test_client().post(
        "/api/v1/optimization/sessions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model_id": model_id, "techniques": ["pruning", "quantization"]},
    )
    return session.get_json()["session_id"]


def start_session(app, token, demo_files) -> int:
    return start_on(app, token, upload_model(app, token, demo_files))


def session_events(ws, session_id, seconds):
    """This session's events as they arrive, until `seconds` have passed (then it fails)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = ws.receive(timeout=1)
        if message is None:
            continue
        event = json.loads(message)
        if event["data"].get("session_id") == session_id:
            yield event
    raise AssertionError(f"nothing more of session {session_id} within {seconds} s")


def events_until_done(ws, session_id, seconds=120):
    seen = []
    for event in session_events(ws, session_id, seconds):
        seen.append(event)
        if event["event"] in TERMINAL:
            return seen
    raise AssertionError("unreachable: session_events raises when time is up")


def next_event(ws, session_id, names, seconds):
    """The next event of this session whose name is in `names`."""
    return next(event for event in session_events(ws, session_id, seconds) if event["event"] in names)
