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

    ws_rule = next(rule for rule in app.url_map.iter_rules() if rule.rule == "/api/v1/ws")
    api.spec.path(
        rule=ws_rule,
        operations={
            "get": {
                "tags": ["Live events"],
                "summary": "WebSocket of JSON events (upgrade with a WebSocket client)",
                "description": WS_DOC,
                "responses": {
                    "101": {"description": "Switching to the WebSocket protocol."},
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
