"""Prometheus metrics: counters kept in each process, and figures read from the database
when /metrics is scraped.

Defined once per process, on prometheus_client's default registry: several
apps in one process (the tests) share them, so tests read differences. Under several
gunicorn workers, PROMETHEUS_MULTIPROC_DIR (set before this module is first imported)
makes every process write its values to files there, and a scrape of any process
adds them all up (multiprocess mode).

Every label takes its values from a set the code fixes (an endpoint's URL rule, a
technique id, a status), never from what a client sent: the series stay bounded.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterator
from datetime import datetime
from importlib import metadata

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import joinedload

from ..extensions import db
from ..tables import OptimizationSession, SessionEvent, SessionStatus, StoredFile, utcnow
from . import system_status

log = logging.getLogger("optideck.metrics")

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
# livesum: in multiprocess mode the open connections of the processes still alive, added up.
CONNECTIONS_OPEN = Gauge(
    "optideck_ws_connections_open",
    "WebSocket connections open now.",
    ["endpoint"],
    multiprocess_mode="livesum",
)
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
EVENT_DELIVERY_SECONDS = Histogram(
    "optideck_event_delivery_seconds",
    "Time from an event's publishing (any process, as the clocks agree) to this process having "
    "handed it to every local subscriber: written to script sockets, queued for the others.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10),
)
ALERTS = Counter("optideck_alerts_total", "Alerts raised.", ["kind"])

REQUESTS = Counter(
    "optideck_http_requests_total",
    "HTTP requests answered, by route (the URL rule, not the path), method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "optideck_http_request_duration_seconds",
    "Time from the first hook to the response, by route, method and status (WebSockets left out).",
    ["route", "method", "status"],
)
STEP_SECONDS = Histogram(
    "optideck_step_duration_seconds",
    "Time of a session's step, from step_started to its end on the timeline, by technique and outcome.",
    ["technique", "outcome"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
CACHE_HITS = Counter("optideck_cache_hits_total", "Cached figures found in the cache.", ["figure"])
CACHE_MISSES = Counter(
    "optideck_cache_misses_total", "Cached figures computed because the cache had none.", ["figure"]
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
# Timeline kinds that end a step, and the outcome each one counts as.
STEP_ENDS = {"step_completed": "completed", "step_skipped": "skipped", "step_rolled_back": "rolled_back"}
# Steps the engine names besides the techniques; anything else a worker sends is "other".
OTHER_STEPS = {"export_onnx": "export_onnx", "search": "search"}


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def count_request(rule: str | None, method: str, status: int, seconds: float | None) -> None:
    route = rule or UNMATCHED_ROUTE
    method = method if method in METHODS else "other"
    REQUESTS.labels(route, method, str(status)).inc()
    if seconds is not None:
        REQUEST_SECONDS.labels(route, method, str(status)).observe(seconds)


def cache_figure(name: str) -> str:
    """The kind of a cached figure: its key's first part ("sessions:total:<filters>" is
    "sessions"), so the filters a user typed never become a label."""
    return name.split(":", 1)[0]


def step_label(step: str | None) -> str:
    """A bounded name for a timeline step (the worker names it; it is not trusted)."""
    from ..engine.techniques import TECHNIQUES

    if step in TECHNIQUES:
        return step
    if step is not None and step.startswith("candidate "):
        return "search_candidate"
    return OTHER_STEPS.get(step or "", "other")


def step_ended(session_id: int, kind: str, step: str | None, at: datetime | None = None) -> None:
    """Observe a step's duration when the timeline line `kind` ends it: the time since the
    same step's newest step_started line of this session."""
    outcome = STEP_ENDS.get(kind)
    if outcome is None:
        return
    started = db.session.scalar(
        select(func.max(SessionEvent.created_at)).where(
            SessionEvent.session_id == session_id,
            SessionEvent.kind == "step_started",
            SessionEvent.step == step if step is not None else SessionEvent.step.is_(None),
        )
    )
    if started is None:
        return  # skipped before it started: no duration to tell
    seconds = ((at or utcnow()) - started).total_seconds()
    STEP_SECONDS.labels(step_label(step), outcome).observe(max(seconds, 0.0))


def sessions_by_status() -> dict[str, int]:
    """Sessions per status, every status present (0 when none)."""
    counts = dict(
        db.session.execute(
            select(OptimizationSession.status, func.count()).group_by(OptimizationSession.status)
        ).all()
    )
    return {status.value: int(counts.get(status.value, 0)) for status in SessionStatus}


class DatabaseCollector:
    """Figures read from the database at scrape time: the same in every process."""

    def collect(self) -> Iterator[Metric]:
        try:
            figures = list(self._figures())
        except SQLAlchemyError:
            # The process's own counters are still worth a scrape.
            log.warning("metrics: could not read the database", exc_info=True)
            db.session.rollback()
            figures = []
        yield GaugeMetricFamily(
            "optideck_database_up", "1 if this scrape could read the database.", int(bool(figures))
        )
        yield from figures

    def _figures(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "optideck_sessions", "Optimization sessions, by status.", labels=["status"]
        )
        for status, count in sessions_by_status().items():
            sessions.add_metric([status], count)
        yield sessions
        load = system_status.current()
        yield GaugeMetricFamily(
            "optideck_queue_length", "Sessions queued, waiting for a worker.", load["queued"]
        )
        yield GaugeMetricFamily("optideck_workers_busy", "Sessions running now.", load["busy"])
        yield GaugeMetricFamily(
            "optideck_workers_capacity",
            "Sessions that can run at once (every live Celery worker's concurrency, added up).",
            load["capacity"],
        )
        yield GaugeMetricFamily(
            "optideck_worker_utilisation",
            "Busy workers over capacity (0..1).",
            load["busy"] / load["capacity"] if load["capacity"] else 0.0,
        )
        workers = system_status.workers()
        if workers is not None:  # Celery workers alive now, every host (capacity adds theirs up)
            yield GaugeMetricFamily("optideck_celery_workers", "Celery workers alive now.", len(workers))


class _ThisProcess:
    """The default registry's metrics (this process's counters, process_* and python_*)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def process_registry() -> CollectorRegistry:
    """The counters of every process in multiprocess mode, else of this one."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_ThisProcess())
    return registry


def scrape_registry() -> CollectorRegistry:
    """What /metrics exposes: the process counters plus the database's figures."""
    registry = process_registry()
    registry.register(DatabaseCollector())
    return registry


def connections_open() -> int:
    """WebSocket connections open now (in every process, in multiprocess mode)."""
    total = 0.0
    for metric in process_registry().collect():
        if metric.name == "optideck_ws_connections_open":
            total += sum(sample.value for sample in metric.samples)
    return int(total)


def alerts_raised() -> dict[str, int]:
    """Alerts raised since the processes started, by kind."""
    raised: dict[str, int] = {}
    for metric in process_registry().collect():
        if metric.name == "optideck_alerts":
            for sample in metric.samples:
                if sample.name == "optideck_alerts_total":
                    kind = sample.labels["kind"]
                    raised[kind] = raised.get(kind, 0) + int(sample.value)
    return raised


# -- The admin System page: the same figures, for a person ---------------------------------

VERSIONED = ("optideck", "onnxruntime", "onnx", "torch", "prometheus-client")
RECENT_FAILURES = 5


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def storage_use() -> dict[str, int]:
    """Files in the content-addressed store and their bytes (each stored once per hash)."""
    files, size = db.session.execute(
        select(func.count(), func.sum(StoredFile.size_bytes)).where(StoredFile.removed_at.is_(None))
    ).one()
    return {"files": int(files), "bytes": int(size or 0)}


def recent_failures(limit: int = RECENT_FAILURES) -> list[OptimizationSession]:
    """The newest failed sessions: each raised a session_failed alert (alerts themselves are
    sent, not kept)."""
    return list(
        db.session.scalars(
            select(OptimizationSession)
            .options(joinedload(OptimizationSession.model))
            .where(OptimizationSession.status == SessionStatus.FAILED.value)
            .order_by(OptimizationSession.completed_at.desc(), OptimizationSession.id.desc())
            .limit(limit)
        )
    )
