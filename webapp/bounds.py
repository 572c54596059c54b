"""What a request may ask of the server: ids a database column holds, dates Python can move,
JSON no deeper than a real document, text fit for a database and a header.

Without these, a number past 2^63 in a path, `created_to=9999-12-31` or a body of
100,000 nested brackets reached the database or the parser and came back as a 500.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import unicodedata
from datetime import UTC, datetime

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider
from marshmallow import ValidationError, fields, validate
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import IntegerConverter
from werkzeug.routing import ValidationError as NoMatch

from .errors import ApiError

MAX_ID = 2**31 - 1  # PostgreSQL's `integer`, the type of every id column
MAX_JSON_DEPTH = 64
# A JSON body is a document, parsed whole in memory: far below the uploads' limit.
MAX_JSON_BYTES = 1 << 20
# Far enough apart for any real filter, close enough that adding a day or moving to UTC
# never leaves what datetime can hold.
MIN_YEAR, MAX_YEAR = 1900, 9000
# The same years, for an OpenAPI document's `pattern` of a date or date-time.
YEAR_PATTERN = r"^(19[0-9]{2}|[2-8][0-9]{3}|9000)-"


def id_field(**kwargs) -> fields.Integer:
    """An id someone sends: past MAX_ID it could name no row, so it is refused, not looked up."""
    return fields.Integer(validate=validate.Range(min=1, max=MAX_ID), **kwargs)


def parse_id(text: str, smallest: int = 1) -> int:
    """int() for an id from a form or a query string: ValueError unless ASCII digits
    from `smallest` to MAX_ID."""
    if (
        not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_ID)))
        or not smallest <= int(text) <= MAX_ID
    ):
        raise ValueError(f"Not an id: {text[:20]!r}.")
    return int(text)


def parse_datetime(text: str) -> datetime:
    """An ISO date or date-time as an aware UTC datetime (naive means UTC); ValueError when
    it does not parse or falls outside MIN_YEAR..MAX_YEAR."""
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise ValueError(f"Use a year from {MIN_YEAR} to {MAX_YEAR}.")
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Line and paragraph separators, controls (CR, LF, NUL, ESC...), format characters (the
# right-to-left override that turns "exe.txt" around) and lone surrogates.
_UNPRINTABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _unprintable(char: str) -> bool:
    return unicodedata.category(char) in _UNPRINTABLE


class Printable(validate.Validator):
    """A one-line name: shown in pages, logs and download names, so nothing that breaks a
    line, a header or the reading order."""

    error = "Use visible characters only: no line breaks, tabs or other control characters."

    def __call__(self, value: str) -> str:
        if any(_unprintable(char) for char in value):
            raise ValidationError(self.error)
        return value


def printable(text: str) -> str:
    """`text` without the characters Printable refuses."""
    return "".join(char for char in text if not _unprintable(char))


def file_stem(name: str, max_length: int = 100) -> str:
    """A stored name made safe for a download's file name: letters, digits, '.', '_' and '-'
    only, never a leading dot, at most `max_length` characters."""
    kept = "".join(char if char.isalnum() or char in "._-" else "_" for char in name)
    kept = re.sub(r"_{2,}", "_", kept).lstrip("._-")[:max_length]
    return kept or "model"


class UnsafeJson(json.JSONDecodeError):
    """A body refused although json.loads might take it: too deep, NaN, a number past a
    double or an int past Python's digit limit, NUL or a lone surrogate in a string."""

    def __init__(self, reason: str, doc: str):
        super().__init__(reason, doc, 0)

    def __str__(self) -> str:
        return self.msg


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_ONE_KIND = str.maketrans("{}", "[]")
# Escapes that decode to what no database column takes.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_NO_DATABASE_TAKES = re.compile("[\x00\ud800-\udfff]")


_STEP = {"[": 1, "]": -1}.__getitem__


def _too_deep(text: str) -> bool:
    """Whether brackets outside strings nest deeper than the limit anywhere (balanced or
    not): counted with C loops, where json.loads would recurse once per level and
    overflow the stack."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_ONE_KIND)
    return max(itertools.accumulate(map(_STEP, brackets)), default=0) > MAX_JSON_DEPTH


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"The number {text[:20]} is too large.")
    return number


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON.")


def _strings(value):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(data: str | bytes, **kwargs):
    """json.loads with the limits above; UnsafeJson (a JSONDecodeError) when one is passed."""
    if isinstance(data, bytes | bytearray):
        try:
            text = data.decode(json.detect_encoding(data))
        except UnicodeDecodeError as exc:
            raise UnsafeJson(
                f"The body is not UTF-8 text ({exc.reason}).", data.decode("utf-8", "replace")
            ) from exc
    else:
        text = data
    if _too_deep(text):
        raise UnsafeJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels.", text)
    try:
        value = json.loads(text, **{"parse_float": _finite, "parse_constant": _no_constant, **kwargs})
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        raise UnsafeJson(str(exc), text) from exc
    if _SUSPECT_ESCAPE.search(text) and any(_NO_DATABASE_TAKES.search(s) for s in _strings(value)):
        raise UnsafeJson("Strings may not hold NUL characters or lone surrogates.", text)
    return value


class _IdConverter(IntegerConverter):
    """`<int:...>` in every route: a number past MAX_ID names nothing, so the route does not
    match (404) instead of sending the number to the database."""

    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)

    def to_python(self, value: str) -> int:
        # Before int(): past 4,300 digits it raises ValueError, which werkzeug does not catch.
        if len(value.lstrip("0")) > len(str(self.max)):
            raise NoMatch()
        return super().to_python(value)


class _JSONProvider(DefaultJSONProvider):
    def loads(self, s, **kwargs):
        return parse_json(s, **kwargs)


def _check_request() -> None:
    """Limits set before any view reads the request."""
    if request.is_json:
        request.max_content_length = MAX_JSON_BYTES
    # PostgreSQL text cannot hold NUL: refused here, before any query or form sees it.
    try:
        sources = (request.args, request.form)
        fields_with_nul = sorted(
            {
                key
                for source in sources
                for key, value in source.items(multi=True)
                if "\x00" in key or "\x00" in value
            }
        )
    except RequestEntityTooLarge:
        return  # the view says so in its own way
    if fields_with_nul:
        raise ApiError(
            400,
            "validation_error",
            "Text may not contain NUL characters.",
            {name.replace("\x00", "\\0"): ["Contains a NUL character."] for name in fields_with_nul},
        )


def init_app(app: Flask) -> None:
    """Before any blueprint: a route's converters are fixed when it is registered."""
    app.url_map.converters["int"] = _IdConverter
    app.json = _JSONProvider(app)
    app.before_request(_check_request)
