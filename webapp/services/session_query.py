"""Filtering, sorting and paging of session lists: one set of rules for pages and API."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import func, select

from ..bounds import MAX_ID, MAX_YEAR, MIN_YEAR, id_field, parse_datetime
from ..extensions import db
from ..tables import ModelMetadata, OptimizationSession, SessionStatus, User
from . import caching, optimization, policy, session_summaries
from .errors import ServiceError

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
SORTS = {
    "created": OptimizationSession.created_at,
    "updated": OptimizationSession.updated_at,
    "size": OptimizationSession.size_reduction_percent,
    "speed": OptimizationSession.speed_improvement_percent,
}


class _When(fields.Field):
    """An ISO date or date-time; a bare date or naive time is taken as UTC."""

    default_error_messages = {
        "invalid": "Not a date: use 2026-11-27 or 2026-11-27T13:00:00Z, "
        f"with a year from {MIN_YEAR} to {MAX_YEAR}."
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            parsed = parse_datetime(value)
        except ValueError as exc:
            raise self.make_error("invalid") from exc
        if self.end_of_day and len(value.strip()) == 10:
            parsed += timedelta(days=1)  # "to 2026-11-27" includes that day
        return parsed

    def __init__(self, end_of_day: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.end_of_day = end_of_day


class SessionQuerySchema(Schema):
    status = fields.List(
        fields.String(validate=validate.OneOf([s.value for s in SessionStatus])),
        metadata={"description": "Repeat for several: status=queued&status=running"},
    )
    model_id = id_field()
    q = fields.String(
        validate=validate.Length(max=200),
        metadata={"description": "Words in the model's name (any case)"},
    )
    owner = fields.String(
        validate=validate.Length(max=64),
        metadata={"description": "Username; for those who see every session"},
    )
    created_from = _When(metadata={"description": "Created at or after (ISO date or date-time)"})
    created_to = _When(
        end_of_day=True, metadata={"description": "Created before (a bare date includes that day)"}
    )
    sort = fields.String(load_default="created", validate=validate.OneOf(list(SORTS)))
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))
    skip = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_ID))
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT))

    @validates_schema
    def _dates_in_order(self, data, **kwargs):
        if "created_from" in data and "created_to" in data and data["created_from"] >= data["created_to"]:
            raise ValidationError("Must be after created_from.", "created_to")


def parse(args) -> dict:
    """Read the filters from a query string (a MultiDict); 400 naming each bad parameter."""
    raw = {}
    for key in SessionQuerySchema().fields:
        values = [v for v in args.getlist(key) if v != ""]
        if not values:
            continue
        raw[key] = values if key == "status" else values[-1]
    try:
        return SessionQuerySchema().load(raw)
    except ValidationError as exc:
        raise ServiceError(
            400, "validation_error", "Invalid list parameters; see details.", exc.normalized_messages()
        ) from exc


def _filtered(user: User, filters: dict):
    """The sessions this user may see that match the filters, unordered."""
    query = optimization.query_for(user)
    if filters.get("status"):
        query = query.where(OptimizationSession.status.in_(filters["status"]))
    if "model_id" in filters:
        query = query.where(OptimizationSession.model_id == filters["model_id"])
    if filters.get("q", "").strip():
        named = select(ModelMetadata.id).where(
            ModelMetadata.name.icontains(filters["q"].strip(), autoescape=True)
        )
        query = query.where(OptimizationSession.model_id.in_(named))
    if filters.get("owner"):
        if not policy.sees_everything(user):
            raise ServiceError(
                400,
                "validation_error",
                "Only you own your sessions.",
                {"owner": ["Filtering by owner needs a role that sees everyone."]},
            )
        owner_id = db.session.scalar(select(User.id).where(User.username == filters["owner"].lower()))
        query = query.where(OptimizationSession.owner_id == owner_id)
    if "created_from" in filters:
        query = query.where(OptimizationSession.created_at >= filters["created_from"])
    if "created_to" in filters:
        query = query.where(OptimizationSession.created_at < filters["created_to"])
    return query


def _ordering(filters: dict) -> tuple:
    column = SORTS[filters["sort"]]
    ordering = column.asc() if filters["order"] == "asc" else column.desc()
    if column.nullable:
        # Sessions without results sort last either way. (Only where a column has NULLs:
        # PostgreSQL would not read created_at's index for a NULLS LAST order.)
        ordering = ordering.nulls_last()
    tiebreak = OptimizationSession.id.asc() if filters["order"] == "asc" else OptimizationSession.id.desc()
    return ordering, tiebreak


def search(user: User, filters: dict) -> dict:
    """{sessions, total, skip, limit}: the page of sessions this user may see."""
    query = _filtered(user, filters)
    ordering, tiebreak = _ordering(filters)
    # The page's ids first, from the sort's index alone; then only those 50 rows. Skipping
    # 90,000 whole rows with their joins took 0.7 s; skipping index entries takes 2 ms.
    page_ids = (
        query.with_only_columns(OptimizationSession.id)
        .order_by(ordering, tiebreak)
        .offset(filters["skip"])
        .limit(filters["limit"])
        .scalar_subquery()
    )
    sessions = session_summaries.summaries(
        select(OptimizationSession).where(OptimizationSession.id.in_(page_ids)).order_by(ordering, tiebreak)
    )
    return {
        "sessions": sessions,
        "total": _total(user, filters, query),
        "skip": filters["skip"],
        "limit": filters["limit"],
    }


def page_key(filters: dict) -> str:
    """The cache name of one page of the list: every filter as the query reads it, in a
    fixed order, so that spellings of one query (statuses reordered or repeated, spaces
    around q) share a page."""
    normal = dict(filters)
    if "status" in normal:
        normal["status"] = sorted(set(normal["status"]))
    if "q" in normal:
        normal["q"] = normal["q"].strip()
    return "session_pages:" + repr(sorted(normal.items()))


COUNTED = ("status", "model_id", "q", "owner", "created_from", "created_to")


def _total(user: User, filters: dict, query) -> int:
    """How many sessions match, over all pages. Counting 100,000 rows on every page turn
    cost more than the page; the count only changes when a session is created or changes
    state, which is when the dashboard's cache generation moves on."""
    key = repr([(name, filters.get(name)) for name in COUNTED])
    return caching.cached_for_generation(
        user,
        f"sessions:total:{key}",
        lambda: db.session.scalar(select(func.count()).select_from(query.subquery())) or 0,
    )


EXPORT_LIMIT = 10_000
EXPORT_COLUMNS = (
    "session_id",
    "model_name",
    "owner",
    "status",
    "techniques",
    "size_reduction_percent",
    "speedup",
    "speedup_low",
    "speedup_high",
    "speed_improvement_percent",
    "accuracy_retention_percent",
    "criteria_met",
    "created_at",
    "completed_at",
    "error_type",
)


def export_csv(user: User, filters: dict) -> str:
    """Every session of the filtered view (not only one page, at most EXPORT_LIMIT), in the
    list's order, as CSV. A cell a spreadsheet would read as a formula (a model named
    "=cmd|..." say) is written as text."""
    ordering, tiebreak = _ordering(filters)
    ids = (
        _filtered(user, filters)
        .with_only_columns(OptimizationSession.id)
        .order_by(ordering, tiebreak)
        .limit(EXPORT_LIMIT)
        .scalar_subquery()
    )
    rows = session_summaries.summaries(
        select(OptimizationSession).where(OptimizationSession.id.in_(ids)).order_by(ordering, tiebreak)
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    writer.writerows([_cell(row.get(column)) for column in EXPORT_COLUMNS] for row in rows)
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    elif hasattr(value, "isoformat"):
        value = value.isoformat()
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
