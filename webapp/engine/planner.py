"""Turn the techniques a user asked for, and the criteria, into ordered steps."""

from __future__ import annotations

from marshmallow import ValidationError

from .search import AUTO
from .techniques import TECHNIQUES

MIN_BUDGET_MINUTES = 0.5


class PlanError(ValueError):
    """The request cannot become a plan. `unprocessable` marks a request that is
    well-formed but does not fit this model (422), as opposed to bad values (400)."""

    def __init__(self, message: str, details: dict, unprocessable: bool = False):
        super().__init__(message)
        self.message = message
        self.details = details
        self.unprocessable = unprocessable


def build_plan(
    model_format: str,
    techniques: list[str],
    parameters: dict,
    criteria: dict,
    has_eval_data: bool,
    budget_minutes: float | None = None,
) -> list[dict]:
    if AUTO in techniques:
        return _search_plan(techniques, parameters, criteria, budget_minutes)
    if budget_minutes is not None:
        raise PlanError(
            "A budget is for a search.",
            {"budget_minutes": [f'Only with "techniques": ["{AUTO}"].']},
        )
    chosen = list(dict.fromkeys(techniques or criteria["enabled_techniques"]))
    unknown = [t for t in chosen if t not in TECHNIQUES]
    if unknown:
        raise PlanError(
            "Unknown technique.",
            {
                "techniques": [
                    f"{t!r} is not a technique Optideck has; choose from {sorted(TECHNIQUES)}."
                    for t in unknown
                ]
            },
        )
    if not chosen:
        raise PlanError("Choose at least one technique.", {"techniques": ["Empty."]})
    forbidden = [t for t in chosen if t in criteria.get("forbidden_techniques", ())]
    if forbidden:
        raise PlanError(
            f"The optimization criteria (version {criteria.get('version', 0)}) forbid "
            f"{', '.join(forbidden)}.",
            {"techniques": [f"{t!r} is forbidden by the optimization criteria." for t in forbidden]},
            unprocessable=True,
        )
    extra = sorted(set(parameters) - set(chosen))
    if extra:
        raise PlanError(
            "Parameters for techniques not chosen.",
            {"parameters": [f"{name!r} is not among the chosen techniques." for name in extra]},
        )
    steps, errors = [], {}
    for technique_id in sorted(chosen, key=lambda t: TECHNIQUES[t].order):
        technique = TECHNIQUES[technique_id]
        given = parameters.get(technique_id) or {}
        if not isinstance(given, dict):
            errors[f"parameters.{technique_id}"] = ["Must be an object of parameters."]
            continue
        base = {} if technique.given_replaces_defaults and given else technique.criteria_defaults(criteria)
        try:
            params = technique.params().load({**base, **given})
        except ValidationError as exc:
            for field, messages in exc.normalized_messages().items():
                errors[f"parameters.{technique_id}.{field}"] = messages
            continue
        if model_format not in technique.formats:
            raise PlanError(
                f"{technique.label} does not support {model_format} models.",
                {"techniques": [f"{technique_id!r} does not support {model_format}."]},
                unprocessable=True,
            )
        needing = technique.needs_data(params)
        if needing and not has_eval_data:
            value = params[needing]
            raise PlanError(
                f"{technique.label} with {needing} {value} calibrates on evaluation data; attach "
                f"an .npz to the model or choose another {needing}.",
                {f"parameters.{technique_id}.{needing}": [f"{value} needs evaluation data."]},
                unprocessable=True,
            )
        steps.append({"technique": technique_id, "params": params})
    if errors:
        raise PlanError("Invalid technique parameters.", errors)
    return steps


def _search_plan(techniques: list[str], parameters: dict, criteria: dict, budget: float | None) -> list[dict]:
    """One step, the search, which explores what the criteria allow (search.py)."""
    if set(techniques) != {AUTO}:
        raise PlanError(
            "A search chooses the techniques itself.",
            {"techniques": [f'"{AUTO}" stands alone: the search explores every allowed technique.']},
        )
    if parameters:
        raise PlanError(
            "A search chooses the parameters itself.",
            {"parameters": ["Leave parameters out of a search."]},
        )
    allowed = set(criteria["enabled_techniques"]) - set(criteria.get("forbidden_techniques", ()))
    if not allowed:
        raise PlanError(
            f"The optimization criteria (version {criteria.get('version', 0)}) allow no technique to search.",
            {"techniques": ["Enable a technique in the optimization criteria first."]},
            unprocessable=True,
        )
    limit = float(criteria.get("max_optimization_time_minutes", 0) or 0)
    if budget is not None and not (budget >= MIN_BUDGET_MINUTES):  # NaN fails too
        raise PlanError(
            f"A search needs a budget of at least {MIN_BUDGET_MINUTES:g} minutes.",
            {"budget_minutes": [f"At least {MIN_BUDGET_MINUTES:g}."]},
        )
    if budget is not None and limit and budget > limit:
        raise PlanError(
            f"The budget is longer than the session's time limit ({limit:g} min).",
            {"budget_minutes": [f"At most {limit:g} (the criteria's max_optimization_time_minutes)."]},
        )
    return [{"technique": AUTO, "params": {"budget_minutes": budget} if budget is not None else {}}]
