"""Prometheus-style counters of the live layer, kept in each process.

Defined once per process, on prometheus_client's default registry: several
apps in one process (the tests) share them, so tests read differences.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_PUBLISHED = Counter(
    "optideck_events_published_total", "Events published on the notification bus.", ["event"]
)
EVENTS_DROPPED = Counter(
    "optideck_events_dropped_total",
    "Events a subscriber's full queue could not take (that subscriber is resynced).",
)
FANOUT_PUBLISH_ERRORS = Counter(
    "optideck_fanout_publish_errors_total",
    "Events Redis could not take (also counted as dropped; clients resync when it is back).",
)
FANOUT_RECONNECTS = Counter(
    "optideck_fanout_reconnects_total",
    "Times the Redis fan-out listener subscribed again after losing Redis (every client resyncs).",
)
CONNECTIONS_OPEN = Gauge("optideck_ws_connections_open", "WebSocket connections open now.", ["endpoint"])
CONNECTIONS = Counter("optideck_ws_connections_total", "WebSocket connections accepted.", ["endpoint"])
CONNECTIONS_REFUSED = Counter(
    "optideck_ws_connections_refused_total",
    "WebSocket connections closed at once (origin, authentication, connection caps).",
    ["endpoint", "reason"],
)
MESSAGES_SENT = Counter(
    "optideck_ws_messages_sent_total", "Messages sent to WebSocket clients.", ["endpoint"]
)
RESYNCS = Counter(
    "optideck_ws_resyncs_total", "Times a client fell behind and was sent the state again.", ["endpoint"]
)
ALERTS = Counter("optideck_alerts_total", "Alerts raised.", ["kind"])
