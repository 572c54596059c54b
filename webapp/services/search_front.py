"""A search session's candidates as its page shows them: the table and two trade-off plots
(accuracy retention against size reduction and against speedup), drawn as server-side SVG.

While the search runs, the candidates come from its timeline (each measured candidate's
event carries its figures); once it completes, from its results, which add the front.
"""

from __future__ import annotations

from ..engine.search import AUTO
from ..tables import OptimizationSession

WIDTH, HEIGHT, MARGIN = 380, 240, 56
PLOTS = (
    ("size_reduction_percent", "Size reduction (%)"),
    ("speedup", "Speedup over the original (x)"),
)


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
        "plots": [_plot(measured, key, label, chosen, floor) for key, label in PLOTS] if measured else [],
    }


def _scale(low: float, high: float, size: float, flip: bool = False):
    span = (high - low) or 1.0

    def place(value: float) -> float:
        share = (value - low) / span
        return round(MARGIN + (1 - share if flip else share) * (size - 2 * MARGIN), 1)

    return place


def _plot(candidates: list[dict], key: str, label: str, chosen: int | None, floor: float) -> dict:
    xs = [c[key] for c in candidates]
    # The original sits at 0 % smaller and 1x: both axes start from it.
    x_low, x_high = min(xs + [0.0 if key == "size_reduction_percent" else 1.0]), max(xs)
    if x_high - x_low < 1e-9:
        x_low, x_high = x_low - 1, x_high + 1
    retained = [c["accuracy_retention_percent"] for c in candidates]
    # The accuracy floor is always in view, so a point's distance from it shows.
    y_low, y_high = min(retained + [floor]) - 0.5, max(retained + [100.0]) + 0.5
    x = _scale(x_low, x_high, WIDTH)
    y = _scale(y_low, y_high, HEIGHT, flip=True)
    points = [
        {
            "x": x(c[key]),
            "y": y(c["accuracy_retention_percent"]),
            "index": c["index"],
            "kind": "chosen" if c["index"] == chosen else ("pareto" if c.get("pareto") else "other"),
            "title": f"#{c['index']} {c['configuration']}: {c[key]:g}, "
            f"{c['accuracy_retention_percent']:g} % retained",
        }
        for c in candidates
    ]
    unit = " %" if key == "size_reduction_percent" else "x"
    return {
        "label": label,
        "width": WIDTH,
        "height": HEIGHT,
        "margin": MARGIN,
        "points": points,
        "floor_y": y(floor),
        "floor_text": f"floor {floor:g} %",
        "x_ticks": [(x(v), f"{v:.3g}{unit}") for v in (x_low, (x_low + x_high) / 2, x_high)],
        "y_ticks": [(y(v), f"{v:.4g} %") for v in (y_low + 0.5, y_high - 0.5)],
    }
