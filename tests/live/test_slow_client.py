"""A client that stops reading must not hold up the others, and must be told to resync."""

import json
import socket
import time

import pytest
from prometheus_client import REGISTRY
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from tests.live.wsclient import connect, receive_json, serving, token_for

pytestmark = pytest.mark.slow  # each test serves its own app

EVENTS = 2000
PADDING = "x" * 16_000  # enough events outgrow every socket buffer between the two ends


class StalledClient:
    """A raw WebSocket client that reads nothing until told to."""

    def __init__(self, address: str, token: str):
        host, port = address.split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(
            self.ws.send(
                Request(
                    host=address,
                    target="/api/v1/ws",
                    extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                )
            )
        )
        self.pending: list[str] = []
        self._text = ""
        while not any(isinstance(e, AcceptConnection) for e in self._read_once(5)):
            pass

    def _read_once(self, timeout: float):
        self.sock.settimeout(timeout)
        self.ws.receive_data(self.sock.recv(65536))
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    self.pending.append(self._text)
                    self._text = ""
        return events

    def read_all(self, quiet_seconds: float = 3.0) -> list[dict]:
        """Everything the server sends until it has been quiet for a while."""
        while True:
            try:
                self._read_once(quiet_seconds)
            except TimeoutError:
                break
        return [json.loads(text) for text in self.pending]

    def close(self):
        self.sock.close()


def test_a_stalled_client_neither_delays_others_nor_misses_the_state(make_app):
    app = make_app(live={"queue_size": 20})
    with app.app_context(), serving(app) as address:
        _, token = token_for("root", "admin")
        resyncs = REGISTRY.get_sample_value("optideck_ws_resyncs_total", {"endpoint": "api"}) or 0
        fast = connect(address, token)
        receive_json(fast)
        stalled = StalledClient(address, token)
        bus = app.extensions["optideck.notifications"]
        received = []
        # In steps of ten, each waited for by the fast client: if the stalled client held up
        # delivery, a receive below would time out.
        for first in range(0, EVENTS, 10):
            for number in range(first, first + 10):
                bus.publish("session_started", {"session_id": number, "padding": PADDING})
            while len(received) < first + 10:
                message = receive_json(fast, timeout=5)
                if message["event"] == "session_started":
                    received.append(message["data"]["session_id"])
        assert received == list(range(EVENTS))
        fast.close()

        late = stalled.read_all()
        names = [m["event"] for m in late]
        assert "resync" in names, names[:5]
        # After the resync comes the state from the database, starting with the load.
        assert names[names.index("resync") + 1] == "system_status"
        assert len([n for n in names if n == "session_started"]) < EVENTS
        assert REGISTRY.get_sample_value("optideck_ws_resyncs_total", {"endpoint": "api"}) > resyncs
        stalled.close()


def _open_streams() -> float:
    return REGISTRY.get_sample_value("optideck_ws_connections_open", {"endpoint": "api"}) or 0


def _settles(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _stalled_and_counted(address: str, token: str, before: float) -> StalledClient:
    """A client that reads nothing, once the server counts its stream open."""
    client = StalledClient(address, token)
    assert _settles(lambda: _open_streams() == before + 1, 5)
    return client


def test_a_client_that_stops_answering_pings_is_dropped(make_app):
    """Is a connection whose client went silent (no pong) closed and forgotten?"""
    app = make_app(live={"ping_seconds": 1})
    with app.app_context(), serving(app) as address:
        _, token = token_for("root", "admin")
        before = _open_streams()
        silent = _stalled_and_counted(address, token, before)
        # Two ping intervals without a pong, and the server lets go of it.
        assert _settles(lambda: _open_streams() == before, 10)
        silent.close()


def test_a_client_that_stops_reading_mid_burst_is_dropped_without_a_server_error(make_app, caplog):
    """The hostile review's client: it never reads, a burst fills its socket, and the
    handler's write waited for ever holding the socket's lock, so the ping that would have
    dropped the client was never sent. Now the write gives up after a ping interval, the
    stream ends, and the client's going is not logged as the server's error."""
    app = make_app(live={"ping_seconds": 1, "queue_size": 20})
    with app.app_context(), serving(app) as address:
        _, token = token_for("root", "admin")
        before = _open_streams()
        stalled = _stalled_and_counted(address, token, before)
        bus = app.extensions["optideck.notifications"]
        for number in range(300):
            bus.publish("session_started", {"session_id": number, "padding": PADDING})
        assert _settles(lambda: _open_streams() == before, 15)
        stalled.close()
    errors = [r for r in caplog.records if r.name == "optideck.errors"]
    assert not errors, "a client's going was logged as the server's error"
