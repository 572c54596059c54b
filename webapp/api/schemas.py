"""Marshmallow schemas of the API's shared shapes.

Those that describe what the services return (results, plan, analysis, event data) list
every field the engine and services write, so the OpenAPI document says what a client
really gets; a field is open (`additionalProperties`) only where its content is too:
a technique's own details.
"""

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from ..bounds import id_field
from ..engine.metrics import TASKS
from ..engine.search import AUTO
from ..engine.techniques import TECHNIQUES, CompressionParams, PruningParams, QuantizationParams
from ..services.criteria import CriteriaSchema
from ..services.session_compare import MAX_COMPARED, ROWS
from ..tables import SessionStatus

# The ids as documented: the registry when the app starts, and the search. The planner
# checks a request against the registry as it is then (tests add a technique at run time).
TECHNIQUE_IDS = [*TECHNIQUES, AUTO]
STATUSES = [s.value for s in SessionStatus]
STEP_OUTCOMES = ["kept", "kept_despite_violation", "rolled_back", "failed", "skipped"]


class Stored(fields.Nested):
    """Documented as its schema, sent as stored. What a worker reported was checked when it
    came in (services/artifacts.py), but only so far: dumping it field by field could fail
    on what a hostile worker wrote, and a read must never be a 500."""

    def _serialize(self, nested_obj, attr, obj, **kwargs):
        return nested_obj


class ErrorSchema(Schema):
    """The body of every API error (docs/architecture.md, "The error contract")."""

    error = fields.String(
        required=True,
        metadata={
            "description": "A stable word to switch on: validation_error, token_missing, "
            "token_invalid, token_expired, forbidden, not_found, conflict, ...",
            "example": "token_expired",
        },
    )
    message = fields.String(required=True, metadata={"example": "The token has expired."})
    details = fields.Raw(metadata={"description": "Field errors or other specifics."})
    timestamp = fields.DateTime(required=True)
    request_id = fields.String(required=True, metadata={"description": "Also in X-Request-ID."})


class TokenSchema(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "bearer"})
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds."})
    refresh_token = fields.String(required=True)


class InputSpecSchema(Schema):
    name = fields.String()
    shape = fields.List(
        fields.Integer(allow_none=True), metadata={"description": "null marks a free dimension (the batch)"}
    )
    dtype = fields.String()


class EvalDataSummarySchema(Schema):
    samples = fields.Integer(metadata={"description": "How many samples the .npz holds"})
    labels = fields.Boolean(metadata={"description": "Whether it came with labels (y)"})


class AnalysisSchema(Schema):
    """What the upload's analysis found, measured in a sandboxed worker."""

    format = fields.String(validate=validate.OneOf(["onnx", "torchscript", "exported_program"]))
    size_bytes = fields.Integer()
    parameter_count = fields.Integer()
    inputs = fields.List(fields.Nested(InputSpecSchema))
    op_histogram = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "How many nodes of each operator type, most frequent first"},
    )
    baseline_latency_ms = fields.Float(metadata={"description": "Median time of one batch"})
    baseline_latency_interval_ms = fields.List(
        fields.Float(), metadata={"description": "The median's 95 % interval: [low, high]"}
    )
    baseline_latency_batch = fields.Integer()
    threads = fields.Integer()
    eval_data = fields.Nested(EvalDataSummarySchema, allow_none=True)


class ModelSchema(Schema):
    model_id = fields.Integer(attribute="id")
    name = fields.String()
    version = fields.Integer()
    format = fields.String(validate=validate.OneOf(["onnx", "torchscript", "exported_program"]))
    sha256 = fields.String()
    size_bytes = fields.Integer()
    parameter_count = fields.Integer()
    input_spec = fields.List(fields.Nested(InputSpecSchema))
    analysis = Stored(AnalysisSchema)
    eval_data = Stored(
        EvalDataSummarySchema,
        attribute="eval_data_summary",
        allow_none=True,
        metadata={"description": "Samples and whether labels came with them"},
    )
    task = fields.String(
        validate=validate.OneOf(list(TASKS)),
        metadata={"description": f"The metric that gates its sessions: {', '.join(TASKS)}"},
    )
    owner = fields.Function(
        lambda m: m.owner.username if m.owner else None, allow_none=True, metadata={"type": "string"}
    )
    created_at = fields.DateTime()


class ModelListSchema(Schema):
    models = fields.List(fields.Nested(ModelSchema))
    total = fields.Integer()


class TechniqueParametersSchema(Schema):
    """Parameters per technique; a technique left out runs with the criteria's defaults."""

    quantization = fields.Nested(QuantizationParams)
    pruning = fields.Nested(PruningParams)
    compression = fields.Nested(CompressionParams)


class _GivenParameters(fields.Nested):
    """Documented as TechniqueParameters, taken as the caller wrote it: the planner fills
    what is left out from the criteria (a schema's defaults would override them) and checks
    each value against the technique registry, naming it `parameters.<technique>.<field>`."""

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise ValidationError("An object of technique ids, each with an object of parameters.")
        return value


class SessionStartSchema(Schema):
    model_id = id_field(required=True, strict=True)
    techniques = fields.List(
        fields.String(metadata={"enum": TECHNIQUE_IDS}),
        load_default=list,
        metadata={
            "description": f"{', '.join(TECHNIQUES)}; empty: the criteria's choice; "
            '["auto"] (alone): a search over every technique the criteria allow'
        },
    )
    budget_minutes = fields.Float(
        allow_nan=False,
        validate=validate.Range(min=0.5, max=1440),
        metadata={
            "description": 'How long a search ("auto") may explore; at most the criteria\'s time limit'
        },
    )
    parameters = _GivenParameters(
        TechniqueParametersSchema,
        load_default=dict,
        metadata={"example": {"quantization": {"mode": "int8_dynamic"}, "pruning": {"sparsity": 0.5}}},
    )


class SessionSchema(Schema):
    session_id = fields.Integer()
    model_id = fields.Integer()
    model_name = fields.String(allow_none=True)
    model_deleted = fields.Boolean()
    owner = fields.String(allow_none=True)
    status = fields.String(validate=validate.OneOf(STATUSES))
    progress_percentage = fields.Float()
    current_step = fields.String(allow_none=True)
    techniques = fields.List(
        fields.String(metadata={"enum": TECHNIQUE_IDS}),
        metadata={"description": "As requested, in plan order"},
    )
    applied = fields.String(
        metadata={"description": "What it did, in words: the steps kept, those rolled back marked so"}
    )
    size_reduction_percent = fields.Float(allow_none=True)
    speed_improvement_percent = fields.Float(
        allow_none=True, metadata={"description": "(original latency / optimized latency - 1) x 100"}
    )
    speedup = fields.Float(
        allow_none=True,
        metadata={
            "description": "original latency / optimized latency (2.0: twice as fast): the median "
            "of paired rounds that time both models alternately"
        },
    )
    speedup_low = fields.Float(allow_none=True, metadata={"description": "speedup's 95 % interval, bottom"})
    speedup_high = fields.Float(allow_none=True, metadata={"description": "speedup's 95 % interval, top"})
    accuracy_retention_percent = fields.Float(allow_none=True)
    criteria_met = fields.Boolean(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)
    estimated_completion_at = fields.DateTime(allow_none=True)
    error_type = fields.String(allow_none=True)
    error_message = fields.String(allow_none=True)


class SessionListSchema(Schema):
    sessions = fields.List(fields.Nested(SessionSchema))
    total = fields.Integer(metadata={"description": "Matching sessions, over all pages"})
    skip = fields.Integer()
    limit = fields.Integer()


class _GivenIds(fields.List):
    """Documented as a list of session ids (ids=3&ids=5), taken as the caller wrote it:
    session_compare.parse_ids reads it as the compare page reads its own, so ids=3,5 works
    too and a bad one is refused with the page's words."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list | tuple):
            raise self.make_error("invalid")
        return [str(item) for item in value]


class SessionCompareQuerySchema(Schema):
    ids = _GivenIds(
        id_field(),
        metadata={
            "description": f"Two to {MAX_COMPARED} sessions, in the order of the columns: "
            "ids=3&ids=5, or ids=3,5",
            "minItems": 2,
            "maxItems": MAX_COMPARED,
            "uniqueItems": True,
        },
    )
    model_id = id_field(
        metadata={
            "description": f"Without ids: this model's latest completed sessions (at most {MAX_COMPARED})"
        }
    )


class SessionComparisonCellSchema(Schema):
    """One session's figure in a row; `low` and `high` bound a latency's or speed-up's
    95 % interval where it was measured."""

    value = fields.Raw(
        allow_none=True,
        metadata={
            # Null in each branch: OpenAPI 3.0 honours `nullable` only beside a `type`.
            "anyOf": [{"type": "number", "nullable": True}, {"type": "string", "nullable": True}],
            "description": "A number (pct: percent, bytes, ms, x: times as fast) or words (text); "
            "null when the session has none",
        },
    )
    low = fields.Float(allow_none=True)
    high = fields.Float(allow_none=True)
    best = fields.Boolean(metadata={"description": "The best figure of its row (ties all marked)"})


class SessionComparisonRowSchema(Schema):
    label = fields.String(metadata={"example": "Size reduction"})
    kind = fields.String(
        validate=validate.OneOf(sorted({kind for _, kind, _ in ROWS})),
        metadata={"description": "How the values read: text, pct, bytes, ms, or x (a speed-up)"},
    )
    differs = fields.Boolean(metadata={"description": "The sessions' values are not all the same"})
    cells = fields.List(
        fields.Nested(SessionComparisonCellSchema), metadata={"description": "One per session, in order"}
    )


class SessionComparisonSchema(Schema):
    sessions = fields.List(fields.Nested(SessionSchema), metadata={"description": "The columns, in order"})
    rows = fields.List(fields.Nested(SessionComparisonRowSchema))
    floor = fields.Float(
        metadata={"description": "The current criteria's minimum accuracy retention, percent"}
    )


class DashboardStatsSchema(Schema):
    total_models = fields.Integer(allow_none=True)
    active_optimizations = fields.Integer(allow_none=True)
    completed_optimizations = fields.Integer(allow_none=True)
    failed_optimizations = fields.Integer(allow_none=True)
    average_size_reduction = fields.Float(
        allow_none=True, metadata={"description": "Percent, over completed"}
    )
    average_speed_improvement = fields.Float(
        allow_none=True, metadata={"description": "Percent, over completed"}
    )
    total_sessions = fields.Integer(allow_none=True)
    last_updated = fields.DateTime()
    unavailable = fields.List(
        fields.String(),
        metadata={
            "description": "Parts that could not be computed (their fields are null): total_models, sessions"
        },
    )


class OutputScoreSchema(Schema):
    output = fields.Integer(metadata={"description": "The output's index"})
    kind = fields.String()
    value = fields.Float(allow_none=True)


class MeasurementSchema(Schema):
    """One model measured: its file, its latency (one batch) and its task score."""

    size_bytes = fields.Integer()
    compressed_size_bytes = fields.Integer(allow_none=True)
    latency_ms = fields.Float()
    latency_low_ms = fields.Float()
    latency_high_ms = fields.Float()
    latency_batch = fields.Integer()
    score = fields.Float(metadata={"description": "The task metric, 0 to 1"})
    score_kind = fields.String()
    outputs = fields.List(fields.Nested(OutputScoreSchema))


class LatencySchema(Schema):
    median_ms = fields.Float()
    low_ms = fields.Float()
    high_ms = fields.Float()
    runs = fields.Integer()


class ComparisonSchema(Schema):
    """Two models timed in paired rounds; speedup is the reference's time over the candidate's."""

    speedup = fields.Float()
    low = fields.Float()
    high = fields.Float()
    reference = fields.Nested(LatencySchema)
    candidate = fields.Nested(LatencySchema)
    rounds = fields.Integer()


class PlanStepSchema(Schema):
    technique = fields.String(metadata={"enum": TECHNIQUE_IDS})
    params = fields.Dict(
        keys=fields.String(),
        metadata={"description": "The technique's parameters as run (see TechniqueParameters)"},
    )


class StepReportSchema(PlanStepSchema):
    """How one step of the plan (or of a search candidate) turned out."""

    outcome = fields.String(validate=validate.OneOf(STEP_OUTCOMES))
    reason = fields.String(allow_none=True)
    details = fields.Dict(
        keys=fields.String(), metadata={"description": "What the technique reports; its own shape"}
    )
    measurement = fields.Nested(MeasurementSchema)
    against_kept = fields.Nested(ComparisonSchema)


class CandidateSchema(Schema):
    """One configuration a search tried, measured against the original."""

    index = fields.Integer()
    configuration = fields.String(metadata={"description": "The configuration in words"})
    steps = fields.List(fields.Nested(PlanStepSchema))
    size_bytes = fields.Integer()
    compressed_size_bytes = fields.Integer()
    size_reduction_percent = fields.Float()
    latency_ms = fields.Float(metadata={"description": "Median of one batch"})
    latency_low_ms = fields.Float()
    latency_high_ms = fields.Float()
    speedup = fields.Float()
    speedup_low = fields.Float()
    speedup_high = fields.Float()
    score = fields.Float()
    accuracy_retention_percent = fields.Float()
    weighted_score = fields.Float()
    seconds = fields.Float(metadata={"description": "How long trying it took"})
    pareto = fields.Boolean(metadata={"description": "On the front: nothing else is better in every way"})
    kept = fields.Boolean(metadata={"description": "Its file is kept: ?candidate=<index> downloads it"})
    meets_criteria = fields.Boolean()
    outcome = fields.String(metadata={"example": "measured"})
    reason = fields.String()


class ResultsSchema(Schema):
    """A completed session's report: the delivered model against the upload."""

    original_size_bytes = fields.Integer()
    optimized_size_bytes = fields.Integer()
    original_compressed_size_bytes = fields.Integer()
    optimized_compressed_size_bytes = fields.Integer()
    original_latency_ms = fields.Float()
    original_latency_low_ms = fields.Float()
    original_latency_high_ms = fields.Float()
    optimized_latency_ms = fields.Float()
    optimized_latency_low_ms = fields.Float()
    optimized_latency_high_ms = fields.Float()
    latency_rounds = fields.Integer()
    latency_batch_size = fields.Integer()
    accuracy_before = fields.Float()
    accuracy_after = fields.Float()
    accuracy_kind = fields.String(metadata={"description": "accuracy, or the agreement measured"})
    evaluation_inputs = fields.String(metadata={"description": "Where the inputs came from"})
    reference_detections = fields.Integer(
        metadata={"description": "detection_f1's: how many of the original's detections it rests on"}
    )
    detection_confidence = fields.Float(
        metadata={
            "description": "detection_f1's: the confidence detections are taken at (0.25, or lower "
            "where the original finds fewer boxes than images there)"
        }
    )
    size_reduction_percent = fields.Float()
    speed_improvement_percent = fields.Float()
    speedup = fields.Float()
    speedup_low = fields.Float()
    speedup_high = fields.Float()
    accuracy_retention_percent = fields.Float()
    criteria_met = fields.Boolean()
    criteria_reason = fields.String(metadata={"description": "A search's: why the criteria were not met"})
    steps = fields.List(fields.Nested(StepReportSchema))
    candidates = fields.List(
        fields.Nested(CandidateSchema), metadata={"description": "A search's: every configuration tried"}
    )
    chosen = fields.Integer(metadata={"description": "A search's: the index of the delivered candidate"})


class SessionCriteriaSchema(CriteriaSchema):
    """The criteria frozen when the session started."""

    version = fields.Integer()


class SearchParamsSchema(Schema):
    budget_minutes = fields.Float(metadata={"description": "How long the search may explore"})


class SessionParametersSchema(TechniqueParametersSchema):
    """The parameters each planned technique runs with (defaults filled in)."""

    auto = fields.Nested(SearchParamsSchema, metadata={"description": "A search's"})


class SessionDetailSchema(SessionSchema):
    parameters = Stored(SessionParametersSchema)
    criteria = Stored(SessionCriteriaSchema)
    criteria_version = fields.Integer(
        allow_none=True, metadata={"description": "The criteria version that allowed its plan"}
    )
    plan = fields.List(Stored(PlanStepSchema))
    results = Stored(ResultsSchema, allow_none=True)


class ArtifactQuerySchema(Schema):
    candidate = fields.Integer(
        validate=validate.Range(min=0, max=10_000),
        metadata={
            "description": "A search's kept candidate (`results.candidates[].index`); default: the chosen one"
        },
    )


class SessionEventDataSchema(Schema):
    """What a timeline entry carries besides its message; which fields depends on its kind,
    and a worker's entries may add figures of their own."""

    class Meta:
        unknown = INCLUDE

    configurations = fields.List(
        fields.String(), metadata={"description": "search_planned: the configurations to try, in words"}
    )
    float_nodes = fields.Integer(
        metadata={"description": "search_probe: how many nodes the fallback's measurement left in float"}
    )
    accuracy_retention_percent = fields.Float(
        metadata={"description": "search_probe: the accuracy retention it measured (not timed)"}
    )
    measurement = fields.Nested(MeasurementSchema)
    inputs = fields.String(metadata={"description": "Where the evaluation inputs came from"})
    technique = fields.String()
    params = fields.Dict(keys=fields.String())
    details = fields.Dict(keys=fields.String())
    against_kept = fields.Nested(ComparisonSchema)
    steps = fields.List(fields.Nested(PlanStepSchema))
    candidate = fields.Nested(CandidateSchema)


class SessionEventSchema(Schema):
    time = fields.DateTime(attribute="created_at")
    kind = fields.String()
    step = fields.String(allow_none=True)
    progress = fields.Float()
    message = fields.String()
    data = Stored(SessionEventDataSchema, allow_none=True)


class SessionEventListSchema(Schema):
    session_id = fields.Integer()
    events = fields.List(fields.Nested(SessionEventSchema))


class SystemStatusSchema(Schema):
    busy = fields.Integer(metadata={"description": "Sessions running"})
    idle = fields.Integer(metadata={"description": "Free worker slots"})
    capacity = fields.Integer()
    queued = fields.Integer()


class AlertSchema(Schema):
    """An alert for admins; kinds add their own figures."""

    class Meta:
        unknown = INCLUDE

    kind = fields.String(metadata={"example": "session_failed"})
    level = fields.String(validate=validate.OneOf(["info", "warning", "error"]))
    message = fields.String()


class LiveErrorSchema(Schema):
    error = fields.String(metadata={"example": "token_expired"})
    message = fields.String()


class ResyncSchema(Schema):
    reason = fields.String()


LIVE_EVENTS = {
    "session_started": SessionSchema,
    "session_progress": SessionSchema,
    "session_completed": SessionSchema,
    "session_failed": SessionSchema,
    "session_cancelled": SessionSchema,
    "system_status": SystemStatusSchema,
    "alert": AlertSchema,
    "resync": ResyncSchema,
    "error": LiveErrorSchema,
}
