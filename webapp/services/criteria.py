"""The optimization criteria: their schema, their versions and their rules.

The current criteria are the newest saved version, else the `[criteria]`
defaults of config.toml (version 0). Every save is a new version; an update
names the version it was based on, and the database's unique version number
makes sure two concurrent saves never both win: the loser gets a 409.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ..bounds import Printable
from ..engine.techniques import TECHNIQUES, Param, criteria_params
from ..extensions import cache, db
from ..tables import CriteriaVersion, User
from . import audit
from .errors import ServiceError

log = logging.getLogger("optideck.criteria")

CACHE_KEY = "criteria:current"
DEPLOYMENTS = ("edge", "mobile", "cloud", "general")
RUNTIMES = ("onnxruntime-cpu",)
THREADS_MAX = 256  # the criteria page states it; the schema enforces it
WEIGHT_TOLERANCE = 0.01


def _finite(**kwargs):
    return fields.Float(allow_nan=False, **kwargs)


def _technique_field(param: Param) -> fields.Field:
    """A technique parameter's default in the criteria: the registry's type and range."""
    if param.kind == "choice":
        rule: validate.Validator = validate.OneOf([value for value, _ in param.choices])
        return fields.String(required=True, validate=rule, metadata={"label": param.label})
    rule = validate.Range(min=param.minimum, max=param.maximum)
    if param.kind == "integer":
        return fields.Integer(required=True, strict=True, validate=rule)
    return _finite(required=True, validate=rule)


class _CriteriaFields(Schema):
    """Every field with its type and range: the page, the API and the defaults share it.
    The techniques' parameter defaults are added from the registry (CriteriaSchema)."""

    class Meta:
        unknown = EXCLUDE  # `version` and friends travel with a document but are not part of it

    name = fields.String(required=True, validate=[validate.Length(min=1, max=100), Printable()])
    description = fields.String(load_default="", validate=validate.Length(max=500))
    target_deployment = fields.String(required=True, validate=validate.OneOf(DEPLOYMENTS))
    hardware_runtime = fields.String(required=True, validate=validate.OneOf(RUNTIMES))
    threads = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=THREADS_MAX))
    enabled_techniques = fields.List(fields.String(), required=True)
    forbidden_techniques = fields.List(fields.String(), load_default=list)
    min_accuracy_retention_percent = _finite(required=True, validate=validate.Range(min=0, max=100))
    max_size_reduction_percent = _finite(required=True, validate=validate.Range(min=0, max=100))
    max_inference_time_ms = _finite(required=True, validate=validate.Range(min=0))
    latency_batch_size = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=4096))
    latency_tolerance_percent = _finite(required=True, validate=validate.Range(min=0, max=1000))
    max_optimization_time_minutes = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1, max=24 * 60)
    )
    weight_accuracy = _finite(required=True, validate=validate.Range(min=0, max=1))
    weight_latency = _finite(required=True, validate=validate.Range(min=0, max=1))
    weight_size = _finite(required=True, validate=validate.Range(min=0, max=1))
    rollback_on_violation = fields.Boolean(required=True)

    @validates("enabled_techniques")
    def _known_enabled(self, value, **kwargs):
        self._known(value)
        if not value:
            raise ValidationError("Enable at least one technique.")

    @validates("forbidden_techniques")
    def _known_forbidden(self, value, **kwargs):
        self._known(value)

    @staticmethod
    def _known(value):
        unknown = [t for t in value if t not in TECHNIQUES]
        if unknown:
            raise ValidationError(
                f"Not techniques Optideck has: {unknown}; choose from {sorted(TECHNIQUES)}."
            )

    @validates_schema
    def _weights_sum_to_one(self, data, **kwargs):
        keys = ("weight_accuracy", "weight_latency", "weight_size")
        if all(k in data for k in keys):
            total = sum(data[k] for k in keys)
            if not math.isclose(total, 1.0, abs_tol=WEIGHT_TOLERANCE):
                raise ValidationError(
                    f"The priority weights sum to {total:g}; they must sum to 1.", "weight_size"
                )


CriteriaSchema = type(
    "CriteriaSchema",
    (_CriteriaFields,),
    # criteria_params() gives only parameters with a criteria key; `if` says so to mypy.
    {param.criteria: _technique_field(param) for _, param in criteria_params() if param.criteria},
)


def conflicts(document: dict, has_calibration_data: bool = True) -> dict[str, list[str]]:
    """Combinations that are each valid alone but cannot work together."""
    found: dict[str, list[str]] = {}
    enabled = set(document["enabled_techniques"])
    both = sorted(enabled & set(document["forbidden_techniques"]))
    if both:
        found["forbidden_techniques"] = [f"{both} are both enabled and forbidden."]
    usable = enabled - set(document["forbidden_techniques"])
    target = document["max_size_reduction_percent"]
    if target:
        reachable = max([_best_reduction(t, document) for t in usable] or [0.0])
        if target > reachable:
            found["max_size_reduction_percent"] = [
                f"No enabled technique can take {target:g} % off the size (at most "
                f"{reachable:g} % with {sorted(usable)})."
            ]
    if not has_calibration_data and usable and all(_needs_data(t, document) for t in usable):
        for technique_id in sorted(usable):
            technique = TECHNIQUES[technique_id]
            needing = technique.needs_data(technique.criteria_defaults(document))
            key = next(p.criteria for p in technique.param_list if p.name == needing)
            if key is None:  # as document[key] would
                raise KeyError(key)
            found[key] = [
                f"{technique.label} with {needing} {document[key]} is all the enabled techniques "
                "can run, and it calibrates on evaluation data no model has."
            ]
    lossy = {t.id for t in TECHNIQUES.values() if t.lossy}
    if (
        document["min_accuracy_retention_percent"] >= 100
        and usable
        and usable <= lossy
        and document["rollback_on_violation"]
    ):
        found["min_accuracy_retention_percent"] = [
            "100 % retention with only lossy techniques rolls back every step; "
            "allow some loss or leave rollback off."
        ]
    return found


def _needs_data(technique_id: str, document: dict) -> bool:
    technique = TECHNIQUES[technique_id]
    return technique.needs_data(technique.criteria_defaults(document)) is not None


def _best_reduction(technique_id: str, document: dict) -> float:
    technique = TECHNIQUES[technique_id]
    return technique.best_size_reduction(technique.criteria_defaults(document))


@dataclass(frozen=True)
class Criteria:
    version: int
    document: dict
    updated_at: datetime | None
    updated_by: str | None
    reverted_from: int | None = None

    @property
    def etag(self) -> str:
        return f'"criteria-v{self.version}"'

    def as_dict(self) -> dict:
        return {
            **self.document,
            "version": self.version,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


def defaults() -> dict:
    return dict(current_app.config["OPTIDECK"]["criteria"])


def check_defaults(settings: dict) -> None:
    """Stop start-up when config.toml's [criteria] would fail the rules a save must pass."""
    from ..config import ConfigError

    try:
        CriteriaSchema().load(settings["criteria"])
    except ValidationError as exc:
        field, messages = next(iter(exc.normalized_messages().items()))
        raise ConfigError(f"criteria.{field}: {' '.join(map(str, messages))}") from exc


def _from_row(row: CriteriaVersion | None) -> Criteria:
    if row is None:
        return Criteria(0, defaults(), None, None)
    return Criteria(row.version, dict(row.document), row.created_at, row.created_by_name, row.reverted_from)


def current() -> Criteria:
    """The criteria in force: cached, and cleared in every process on save (with Redis)."""
    found = cache.get(CACHE_KEY)
    if found is not None:
        return found
    row = db.session.scalar(select(CriteriaVersion).order_by(CriteriaVersion.version.desc()).limit(1))
    criteria = _from_row(row)
    cache.set(CACHE_KEY, criteria, timeout=0)
    return criteria


def versions() -> list[Criteria]:
    rows = db.session.scalars(select(CriteriaVersion).order_by(CriteriaVersion.version.desc()))
    return [_from_row(row) for row in rows]


def get_version(number: int) -> Criteria:
    if number == 0:
        return _from_row(None)
    row = db.session.scalar(select(CriteriaVersion).where(CriteriaVersion.version == number))
    if row is None:
        raise ServiceError(404, "not_found", f"No criteria version {number}.")
    return _from_row(row)


def validate_document(data: dict) -> dict:
    """The document, loaded; 400 with per-field errors when a value is wrong."""
    try:
        return CriteriaSchema().load(data)
    except ValidationError as exc:
        raise ServiceError(
            400, "validation_error", "Some criteria are invalid; see details.", exc.normalized_messages()
        ) from exc


def _has_calibration_data() -> bool:
    from ..tables import ModelMetadata

    return bool(
        db.session.scalar(
            select(func.count())
            .select_from(ModelMetadata)
            .where(ModelMetadata.deleted_at.is_(None), ModelMetadata.eval_data_sha256.is_not(None))
        )
    )


def problems(data: dict, has_calibration_data: bool = True) -> dict:
    """Every problem of a criteria document at once: its fields' errors, and the conflicts
    between its valid fields (a wrong field is judged at its current value meanwhile), so a
    form shows both kinds together instead of one after the other."""
    try:
        return conflicts(validate_document(data), has_calibration_data)
    except ServiceError as exc:
        errors = dict(exc.details)
    valid = {key: value for key, value in data.items() if key not in errors}
    try:
        rest = CriteriaSchema().load({**current().document, **valid})
    except ValidationError:
        return errors
    for key, messages in conflicts(rest, has_calibration_data).items():
        errors.setdefault(key, messages)
    return errors


def save(data: dict, based_on: int | None, by: User, reverted_from: int | None = None) -> Criteria:
    """Store `data` as the next version, if `based_on` is still the current one."""
    try:
        document = validate_document(data)
    except ServiceError as exc:
        exc.details = problems(data, _has_calibration_data())
        raise
    if based_on is None:
        raise ServiceError(
            428,
            "precondition_required",
            "Say which version you edited: an If-Match header or a `version` field.",
            {"version": ["Required."]},
        )
    clash = conflicts(document, _has_calibration_data())
    if clash:
        raise ServiceError(409, "conflict", "The criteria contradict each other; see details.", clash)
    latest = current_number()
    if based_on != latest:
        raise _stale(based_on, latest)
    row = CriteriaVersion(
        version=latest + 1,
        document=document,
        created_by_id=by.id,
        created_by_name=by.username,
        reverted_from=reverted_from,
    )
    db.session.add(row)
    try:
        db.session.flush()
    except IntegrityError:
        # Another process saved version latest + 1 between our read and our write.
        db.session.rollback()
        raise _stale(based_on, current_number()) from None
    audit.record(
        "criteria.revert" if reverted_from is not None else "criteria.save",
        user=by,
        resource=f"criteria:v{row.version}",
        detail=f"based on v{based_on}"
        + (f", restoring v{reverted_from}" if reverted_from is not None else ""),
        commit=False,
    )
    db.session.commit()
    cache.delete(CACHE_KEY)
    return _from_row(row)


def revert(number: int, based_on: int | None, by: User) -> Criteria:
    """Make an earlier version current again, as a new version."""
    return save(get_version(number).document, based_on, by, reverted_from=number)


def current_number() -> int:
    # Read the database, not the cache: this number decides who wins a save.
    return db.session.scalar(select(func.max(CriteriaVersion.version))) or 0


def _stale(based_on: int, latest: int) -> ServiceError:
    current_criteria = get_version(latest)
    return ServiceError(
        409,
        "stale_version",
        f"You edited version {based_on}, but version {latest} was saved meanwhile "
        f"by {current_criteria.updated_by or 'the defaults'}. Review it and save again.",
        {"current_version": latest, "current": {**current_criteria.document, "version": latest}},
    )


def diff(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(field, old value, new value) for every field that differs."""
    keys = list(dict.fromkeys([*old, *new]))
    return [(key, old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)]
