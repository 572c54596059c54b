"""How pages write numbers and times: one filter each, so every page says it alike.

A missing value (a session without results yet) is an em dash everywhere.
"""

from __future__ import annotations

from datetime import datetime

from flask import Flask

from ..engine.search import describe

MISSING = "—"
TIME_FORMATS = {
    "minute": "%Y-%m-%d %H:%M",
    "second": "%Y-%m-%d %H:%M:%S",
    "utc": "%Y-%m-%d %H:%M UTC",
    "date": "%Y-%m-%d",
    "clock": "%H:%M:%S",
    "clock-utc": "%H:%M:%S UTC",
}


def pct(value: float | None, digits: int = 1) -> str:
    """12.345 as "12.3 %"."""
    return MISSING if value is None else f"{value:.{digits}f} %"


def speedup(value: float | None, percent: bool = False) -> str:
    """A speed factor (original latency / new latency) as "2.34x"; with percent, the value
    is a speed improvement in percent (134.0 is 2.34x)."""
    if value is None:
        return MISSING
    return f"{1 + value / 100 if percent else value:.2f}x"


def ms(value: float | None, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f} ms"


def between(low: float | None, high: float | None, digits: int = 3, unit: str = "") -> str:
    """An interval as "0.490–0.510 ms"; nothing when either end is missing (older results)
    or not a number."""
    if not all(isinstance(end, int | float) and not isinstance(end, bool) for end in (low, high)):
        return ""
    return f"{low:.{digits}f}–{high:.{digits}f}{unit}"


def number(value: int | None) -> str:
    """1126410 as "1,126,410"."""
    return MISSING if value is None else f"{value:,}"


def when(value: datetime | None, precision: str = "minute", empty: str = MISSING) -> str:
    """A time as pages show it; `precision` is one of TIME_FORMATS."""
    return value.strftime(TIME_FORMATS[precision]) if value else empty


def filesize(value: int | None) -> str:
    if value is None:
        return MISSING
    size = float(value)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.2f} {unit}"
        size /= 1000
    return str(value)


def step_words(step: dict) -> str:
    """A planned step's technique and parameters in words ("int8 static, QDQ, min-max
    calibration"), not as JSON."""
    return describe(step)


def plain_errors(messages) -> str:
    """A field's validation messages as a sentence: a list's per-item messages ({"0": [...]})
    and nested ones flattened, each said once."""
    found: list[str] = []

    def collect(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)
        elif str(value) not in found:
            found.append(str(value))

    collect(messages)
    return " ".join(found)


def init_app(app: Flask) -> None:
    for function in (pct, speedup, ms, between, number, when, filesize, step_words, plain_errors):
        app.add_template_filter(function)
