"""Live updates: NotificationService events to WebSockets.

`/ws` serves browsers (session cookie): out-of-band HTML fragments rendered
from the same partials the pages use. `/api/v1/ws` serves scripts (bearer
token): JSON events. Both check the Origin header, send a snapshot from the
database on every (re)connect, and filter every event by what the user may see.
"""

from __future__ import annotations

import functools
import threading

from flask import Flask, request
from werkzeug.routing import WebsocketMismatch

from ..bounds import YEAR_PATTERN, parse_datetime
from ..errors import ApiError
from ..extensions import api, sock

MAX_MESSAGE_BYTES = 64 * 1024


def init_app(app: Flask) -> None:
    # The routes join flask-sock's blueprint when their modules load: before it is registered.
    from . import browser, scripts  # noqa: F401
    from .admission import Admission
    from .connection import WakingEvent
    from .watch import AccessWatch

    app.extensions["optideck.admission"] = Admission(app.config["OPTIDECK"])
    app.extensions["optideck.access_watch"] = AccessWatch(app)
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        {
            "ping_interval": app.config["OPTIDECK"]["live"]["ping_seconds"],
            # Clients send only small JSON actions; a stranger may not buffer megabytes in
            # the seconds it has to authenticate.
            "max_message_size": MAX_MESSAGE_BYTES,
            "event_class": WakingEvent,
            # Each connection's reader thread may outlive its handler by a ping interval (when
            # gunicorn closes the socket under it); as a daemon it cannot hold up a worker's exit.
            "thread_class": functools.partial(threading.Thread, daemon=True),
        },
    )
    sock.init_app(app)

    @app.before_request
    def no_compression():
        # Live messages are small: permessage-deflate saved little, yet each connection's
        # zlib state cost ~150 KiB and every message a compression (bench/live_fanout.py).
        if request.path in ("/ws", "/api/v1/ws"):
            request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)

    @app.before_request
    def script_socket_handshake():
        # Refused before the handshake, as plain HTTP answers a client can read: once
        # upgraded, a socket could only say it in a close frame.
        # A plain request matches the socket's rule with werkzeug's WebsocketMismatch; a
        # method the rule does not take is left to its 405, OPTIONS to Flask (and CORS).
        if (
            request.path == SCRIPTS_PATH
            and request.method in ("GET", "HEAD")
            and (
                request.routing_exception is None or isinstance(request.routing_exception, WebsocketMismatch)
            )
        ):
            check_handshake()

    _document(app)


SCRIPTS_PATH = "/api/v1/ws"
SINCE_FORMAT = "Use an ISO 8601 date or date-time (2026-11-27T13:00:00Z) with a year from 1900 to 9000."


def check_handshake() -> None:
    """A bad `since` is a 400 and a request that is no WebSocket handshake (werkzeug tells,
    by `Upgrade: websocket` and `Connection: Upgrade`) a 426, each with the API's error
    body, as the OpenAPI document says."""
    since = request.args.get("since")
    if since is not None:
        try:
            parse_datetime(since)
        except ValueError:
            raise ApiError(
                400,
                "validation_error",
                f"`since` is not a time: {SINCE_FORMAT}",
                {"since": [SINCE_FORMAT]},
            ) from None
    if isinstance(request.routing_exception, WebsocketMismatch):
        raise ApiError(
            426,
            "upgrade_required",
            "This is a WebSocket: connect with a WebSocket client (Upgrade: websocket).",
            headers={"Upgrade": "websocket"},
        )


def _document(app: Flask) -> None:
    from ..api.schemas import LIVE_EVENTS

    for name, schema in {
        schema.__name__.removesuffix("Schema"): schema for schema in LIVE_EVENTS.values()
    }.items():
        if name not in api.spec.components.schemas:
            api.spec.components.schema(name, schema=schema)
    api.spec.components.schema(
        "LiveEvent",
        {
            "type": "object",
            "description": "One message of /api/v1/ws: a Session for the session_* events, "
            "else the schema named after the event.",
            "required": ["event", "data", "timestamp"],
            "properties": {
                "event": {"type": "string", "enum": list(LIVE_EVENTS)},
                "data": {
                    "anyOf": [
                        {"$ref": f"#/components/schemas/{name}"}
                        for name in dict.fromkeys(
                            schema.__name__.removesuffix("Schema") for schema in LIVE_EVENTS.values()
                        )
                    ]
                },
                "timestamp": {"type": "string", "format": "date-time"},
            },
        },
    )
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    ws_rule = next(rule for rule in app.url_map.iter_rules() if rule.rule == SCRIPTS_PATH)
    api.spec.path(
        rule=ws_rule,
        operations={
            "get": {
                "tags": ["Live events"],
                "operationId": "openEventStream",
                "summary": "WebSocket of JSON events (upgrade with a WebSocket client)",
                "description": WS_DOC,
                # The token may come after the upgrade, in the first message; a bad one is
                # told in an `error` event and a 1008 close, never in an HTTP 401.
                "security": [],
                "parameters": [
                    {
                        "in": "query",
                        "name": "since",
                        "required": False,
                        "description": "Your last message's timestamp: the snapshot adds every "
                        "session that changed after it. " + SINCE_FORMAT,
                        "schema": {
                            "anyOf": [
                                {"type": "string", "format": "date", "pattern": YEAR_PATTERN},
                                {"type": "string", "format": "date-time", "pattern": YEAR_PATTERN},
                            ]
                        },
                    }
                ],
                "responses": {
                    "101": {"description": "Switching to the WebSocket protocol; messages are LiveEvent."},
                    "400": {
                        "description": "`since` is not a time; `details.since` says why.",
                        "content": error,
                    },
                    "426": {
                        "description": "Not a WebSocket handshake (no `Upgrade: websocket`).",
                        "content": error,
                    },
                    "default": {"$ref": "#/components/responses/DEFAULT_ERROR"},
                },
            }
        },
    )


WS_DOC = """Connect with a WebSocket client; authenticate with `Authorization: Bearer <token>`
on the upgrade request, or send `{"action": "auth", "token": "..."}` first, within
`live.auth_timeout_seconds` (5 s by default). Each message is
`{"event": NAME, "data": {...}, "timestamp": ISO-8601}` with NAME one of session_started,
session_progress, session_completed, session_failed, session_cancelled, system_status,
alert (admins only), plus `resync` (you fell behind; the current state follows) and `error`.
On connect you get system_status and the state of every active session you may see; add
`?since=<timestamp of your last message>` on a reconnect to also get every session that changed
meanwhile. Narrow the stream with `{"action": "subscribe", "session_id": 7}` and widen it again
with `unsubscribe`.

The stream follows its token: revoked, expired or its account deactivated, it sends an
`error` event and closes with code 1008; after a role change it sends `resync` and goes on
with what the new role may see. A server with all its sockets taken refuses a new one with
1013 (try again later); too many sockets for one account or one address, with 1008.

```python
import json
from simple_websocket import Client  # pip install simple-websocket

ws = Client.connect("ws://127.0.0.1:5000/api/v1/ws",
                    headers={"Authorization": "Bearer odk_..."})
ws.send(json.dumps({"action": "subscribe", "session_id": 7}))
while True:
    message = json.loads(ws.receive())
    print(message["event"], message["data"].get("progress_percentage"))
    if message["event"] in ("session_completed", "session_failed", "session_cancelled"):
        break
ws.close()
```
"""
