"""Trade-off plots of finished sessions: accuracy retention against size reduction and
against speedup, as SVG coordinates a template draws (templates/_plots.html).

The dashboard plots one model's sessions, the compare page the sessions picked; each
point links to its session. The front is marked: no other session is as small, as fast
and as accurate at once.
"""

from __future__ import annotations

WIDTH, HEIGHT = 380, 220
# Room for the tick labels: the y axis's on the left, the x axis's below.
LEFT, RIGHT, TOP, BOTTOM = 52, 28, 14, 30
AXES = (
    ("size_reduction_percent", "size reduction", " %"),
    ("speedup", "speedup over the original", "x"),
)
# The higher the better, each of them.
FIGURES = ("size_reduction_percent", "speedup", "accuracy_retention_percent")


def plottable(summary: dict) -> bool:
    """A session with all three figures (a completed one)."""
    return all(isinstance(summary.get(key), int | float) for key in FIGURES)


def _dominates(a: dict, b: dict) -> bool:
    return all(a[k] >= b[k] for k in FIGURES) and any(a[k] > b[k] for k in FIGURES)


def front(summaries: list[dict]) -> set[int]:
    """The session ids on the trade-off front of `summaries` (all plottable)."""
    return {s["session_id"] for s in summaries if not any(_dominates(other, s) for other in summaries)}


def session_plots(summaries: list[dict], floor: float, href) -> list[dict]:
    """Two plots of the plottable session `summaries`; `href(session_id)` links each point,
    `floor` is the minimum accuracy retention, drawn as a line."""
    sessions = [s for s in summaries if plottable(s)]
    best = front(sessions)

    def point(s: dict, key: str, unit: str) -> dict:
        return {
            "text": f"#{s['session_id']}",
            "kind": "pareto" if s["session_id"] in best else "other",
            "href": href(s["session_id"]),
            "title": f"Session #{s['session_id']}: {s[key]:.3g}{unit}, "
            f"{s['accuracy_retention_percent']:.4g} % retained",
        }

    return plots(sessions, floor, point)


def plots(items: list[dict], floor: float, point) -> list[dict]:
    """One plot per axis of `items` (each with the FIGURES); `point(item, key, unit)` gives a
    point's text, kind (chosen, pareto or other), title and link."""
    if not items:
        return []
    return [_plot(items, key, label, unit, floor, point) for key, label, unit in AXES]


def _scale(low: float, high: float, start: float, end: float):
    """value -> coordinate, `low` at `start` and `high` at `end` (end < start flips it)."""
    span = (high - low) or 1.0

    def place(value: float) -> float:
        return round(start + (value - low) / span * (end - start), 1)

    return place


def _plot(items: list[dict], key: str, label: str, unit: str, floor: float, point) -> dict:
    xs = [item[key] for item in items]
    # The original sits at 0 % smaller and 1x: both axes start from it.
    x_low, x_high = min(xs + [0.0 if key == "size_reduction_percent" else 1.0]), max(xs)
    if x_high - x_low < 1e-9:
        x_low, x_high = x_low - 1, x_high + 1
    retained = [item["accuracy_retention_percent"] for item in items]
    # The floor is always in view, so a point's distance from it shows.
    y_low, y_high = min(retained + [floor]) - 0.5, max(retained + [100.0]) + 0.5
    x = _scale(x_low, x_high, LEFT, WIDTH - RIGHT)
    y = _scale(y_low, y_high, HEIGHT - BOTTOM, TOP)
    return {
        "label": label,
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "bottom": HEIGHT - BOTTOM,
        "points": [
            {"x": x(item[key]), "y": y(item["accuracy_retention_percent"]), **point(item, key, unit)}
            for item in items
        ],
        "floor_y": y(floor),
        "floor_text": f"{floor:g} % floor",
        "x_ticks": [(x(v), f"{v:.3g}{unit}") for v in (x_low, (x_low + x_high) / 2, x_high)],
        "y_ticks": [(y(v), f"{v:.4g} %") for v in (y_low + 0.5, y_high - 0.5)],
    }
