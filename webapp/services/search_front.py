"""A search session's candidates as its page shows them: the table and two trade-off plots
(accuracy retention against size reduction and against speedup), drawn as server-side SVG.

While the search runs, the candidates come from its timeline (each measured candidate's
event carries its figures); once it completes, from its results, which add the front.
"""

from __future__ import annotations

from ..engine.search import AUTO
from ..tables import OptimizationSession
from . import tradeoff


def is_search(session: OptimizationSession) -> bool:
    return session.techniques == [AUTO]


def front(session: OptimizationSession) -> dict | None:
    """{candidates, chosen, plots} for a search session, or None for any other session."""
    if not is_search(session):
        return None
    results = session.results or {}
    if "candidates" in results:
        candidates = results["candidates"]
    else:  # checked as they arrived (executor.py); the latest line of each candidate counts
        latest = {
            e.data["candidate"]["index"]: e.data["candidate"]
            for e in session.events
            if e.data and isinstance(e.data.get("candidate"), dict)
        }
        candidates = [latest[index] for index in sorted(latest)]
    chosen = results.get("chosen")
    floor = float(session.criteria.get("min_accuracy_retention_percent", 99.0))
    measured = [c for c in candidates if c.get("speedup") is not None]
    return {
        "candidates": candidates,
        "chosen": chosen,
        "complete": "candidates" in results,
        "plots": tradeoff.plots(measured, floor, lambda c, key, unit: _point(c, key, unit, chosen)),
    }


def _point(candidate: dict, key: str, unit: str, chosen: int | None) -> dict:
    index = candidate["index"]
    return {
        "text": str(index),
        "kind": "chosen" if index == chosen else ("pareto" if candidate.get("pareto") else "other"),
        "title": f"#{index} {candidate['configuration']}: {candidate[key]:.3g}{unit}, "
        f"{candidate['accuracy_retention_percent']:g} % retained",
    }
