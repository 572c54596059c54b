"""Sessions side by side: the compare page's table (one column per session, the differences
marked, the best figure of each row marked) and its trade-off plots."""

from __future__ import annotations

from ..bounds import parse_id
from ..extensions import db
from ..tables import OptimizationSession, SessionStatus
from . import optimization, session_summaries, tradeoff
from .errors import ServiceError

MAX_COMPARED = 6
PICKABLE = 60

# (label, how the value reads, which end is better: "high", "low" or None)
ROWS = (
    ("Model", "text", None),
    ("Status", "text", None),
    ("What was applied", "text", None),
    ("Criteria version", "text", None),
    ("Minimum accuracy retention", "pct", None),
    ("Original size", "bytes", None),
    ("Optimized size", "bytes", "low"),
    ("Size reduction", "pct", "high"),
    ("Original latency", "ms", None),
    ("Optimized latency", "ms", "low"),
    ("Speed-up", "x", "high"),
    ("Accuracy measure", "text", None),
    ("Accuracy before", "pct", None),
    ("Accuracy after", "pct", "high"),
    ("Accuracy retained", "pct", "high"),
    ("Criteria met", "text", None),
)


def parse_ids(given: list[str]) -> list[int]:
    """The picked sessions' numbers, each once, in the order given (raises ServiceError)."""
    ids: list[int] = []
    for text in given:
        for part in text.split(","):
            if not part.strip():
                continue
            try:
                number = parse_id(part.strip())
            except ValueError:
                raise ServiceError(
                    400,
                    "validation_error",
                    f"{part.strip()!r} is not a session's number.",
                    {"ids": ["Numbers."]},
                ) from None
            if number not in ids:
                ids.append(number)
    if not 2 <= len(ids) <= MAX_COMPARED:
        raise ServiceError(
            400,
            "validation_error",
            f"Pick 2 to {MAX_COMPARED} sessions to compare.",
            {"ids": [f"2 to {MAX_COMPARED} sessions."]},
        )
    return ids


def _cells(session: OptimizationSession, summary: dict) -> list[tuple]:
    """The session's (value, low, high) per row of ROWS, in order."""
    r = session.results or {}
    model = session.model
    met = r.get("criteria_met")

    def interval(*keys):
        return tuple(r.get(key) for key in keys)

    def pct_of(key):
        return None if r.get(key) is None else r[key] * 100

    return [
        (f"{model.name} v{model.version}" if model else "(deleted)", None, None),
        (session.status, None, None),
        (summary["applied"], None, None),
        (str(session.criteria_version), None, None),
        (session.criteria.get("min_accuracy_retention_percent"), None, None),
        (r.get("original_size_bytes"), None, None),
        (r.get("optimized_size_bytes"), None, None),
        (r.get("size_reduction_percent"), None, None),
        (r.get("original_latency_ms"), r.get("original_latency_low_ms"), r.get("original_latency_high_ms")),
        (
            r.get("optimized_latency_ms"),
            r.get("optimized_latency_low_ms"),
            r.get("optimized_latency_high_ms"),
        ),
        (r.get("speedup"), r.get("speedup_low"), r.get("speedup_high")),
        ((r.get("accuracy_kind") or "").replace("_", " ") or None, None, None),
        (pct_of("accuracy_before"), None, None),
        (pct_of("accuracy_after"), None, None),
        (r.get("accuracy_retention_percent"), None, None),
        (None if met is None else ("yes" if met else "no"), None, None),
    ]


def _row(label: str, kind: str, better: str | None, cells: list[tuple]) -> dict:
    values = [value for value, _, _ in cells]
    known = [v for v in values if v is not None]
    differs = len({repr(v) for v in values}) > 1
    best = None
    if better and differs and len(known) > 1:
        best = max(known) if better == "high" else min(known)
    return {
        "label": label,
        "kind": kind,
        "differs": differs,
        "cells": [
            {"value": value, "low": low, "high": high, "best": best is not None and value == best}
            for value, low, high in cells
        ],
    }


def compare(user, ids: list[int], href=None) -> dict:
    """The table of the sessions `ids` (each visible to `user`, else 404), and with
    `href(session_id)`, which links a plot's point to its session, their plots."""
    sessions = [optimization.get_for(user, session_id) for session_id in ids]
    summaries = [session_summaries.summary(s) for s in sessions]
    columns = [_cells(s, summary) for s, summary in zip(sessions, summaries, strict=True)]
    rows = [
        _row(label, kind, better, [c[i] for c in columns]) for i, (label, kind, better) in enumerate(ROWS)
    ]
    floor = float(optimization.current_criteria()["min_accuracy_retention_percent"])
    comparison = {
        "sessions": summaries,
        "rows": rows,
        "floor": floor,
        "models": len({s.model_id for s in sessions}),
    }
    if href is not None:
        comparison["plots"] = tradeoff.session_plots(summaries, floor, href)
    return comparison


def pickable(user, model_id: int | None = None) -> list[dict]:
    """The latest completed sessions `user` may see (of one model if given), to pick from."""
    query = optimization.query_for(user).where(OptimizationSession.status == SessionStatus.COMPLETED.value)
    if model_id is not None:
        query = query.where(OptimizationSession.model_id == model_id)
    return session_summaries.summaries(
        query.order_by(OptimizationSession.completed_at.desc()).limit(PICKABLE)
    )


def chosen_ids(user, given: list[str], model_id: int | None) -> list[int]:
    """The sessions to compare (page and API alike): those given, or else, with only a
    model named, its latest completed ones (raises ServiceError)."""
    if any(given) or model_id is None:
        return parse_ids(given)
    latest = latest_of_model(user, model_id)
    if len(latest) < 2:
        raise ServiceError(
            400,
            "validation_error",
            "This model has fewer than two completed sessions; comparing needs two.",
            {"ids": ["2 to 6 sessions."]},
        )
    return latest


def latest_of_model(user, model_id: int, count: int = MAX_COMPARED) -> list[int]:
    """The ids of a model's latest completed sessions, newest first."""
    query = (
        optimization.query_for(user)
        .with_only_columns(OptimizationSession.id)
        .where(
            OptimizationSession.status == SessionStatus.COMPLETED.value,
            OptimizationSession.model_id == model_id,
        )
        .order_by(OptimizationSession.completed_at.desc())
        .limit(count)
    )
    return list(db.session.scalars(query))
