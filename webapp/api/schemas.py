"""Marshmallow schemas of the API's shared shapes."""

from marshmallow import Schema, fields, validate

from ..bounds import id_field
from ..engine.metrics import TASKS
from ..engine.techniques import TECHNIQUES


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


class ModelSchema(Schema):
    model_id = fields.Integer(attribute="id")
    name = fields.String()
    version = fields.Integer()
    format = fields.String(metadata={"description": "onnx, torchscript or exported_program"})
    sha256 = fields.String()
    size_bytes = fields.Integer()
    parameter_count = fields.Integer()
    input_spec = fields.List(fields.Nested(InputSpecSchema))
    analysis = fields.Dict(metadata={"description": "Layer types, baseline latency and more"})
    eval_data = fields.Dict(
        attribute="eval_data_summary",
        allow_none=True,
        metadata={"description": "Samples and whether labels came with them"},
    )
    task = fields.String(metadata={"description": f"The metric that gates its sessions: {', '.join(TASKS)}"})
    owner = fields.Function(lambda m: m.owner.username if m.owner else None)
    created_at = fields.DateTime()


class ModelListSchema(Schema):
    models = fields.List(fields.Nested(ModelSchema))
    total = fields.Integer()


class SessionStartSchema(Schema):
    model_id = id_field(required=True, strict=True)
    techniques = fields.List(
        fields.String(),
        load_default=list,
        metadata={
            "description": f"{', '.join(TECHNIQUES)}; empty: the criteria's choice; "
            '["auto"]: a search over every technique the criteria allow'
        },
    )
    budget_minutes = fields.Float(
        allow_nan=False,
        validate=validate.Range(min=0.5, max=1440),
        metadata={
            "description": 'How long a search ("auto") may explore; at most the criteria\'s time limit'
        },
    )
    parameters = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(),
        load_default=dict,
        metadata={"example": {"quantization": {"mode": "int8_dynamic"}, "pruning": {"sparsity": 0.5}}},
    )


class SessionSchema(Schema):
    session_id = fields.Integer()
    model_id = fields.Integer()
    model_name = fields.String(allow_none=True)
    model_deleted = fields.Boolean()
    owner = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "queued, running, completed, failed, cancelled"})
    progress_percentage = fields.Float()
    current_step = fields.String(allow_none=True)
    techniques = fields.List(fields.String())
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


class SessionDetailSchema(SessionSchema):
    parameters = fields.Dict()
    criteria = fields.Dict(metadata={"description": "The criteria frozen when it started"})
    criteria_version = fields.Integer(
        allow_none=True, metadata={"description": "The criteria version that allowed its plan"}
    )
    plan = fields.List(fields.Dict())
    results = fields.Dict(allow_none=True)


class ArtifactQuerySchema(Schema):
    candidate = fields.Integer(
        validate=validate.Range(min=0, max=10_000),
        metadata={
            "description": "A search's kept candidate (`results.candidates[].index`); default: the chosen one"
        },
    )


class SessionEventSchema(Schema):
    time = fields.DateTime(attribute="created_at")
    kind = fields.String()
    step = fields.String(allow_none=True)
    progress = fields.Float()
    message = fields.String()
    data = fields.Dict(allow_none=True)


class SessionEventListSchema(Schema):
    session_id = fields.Integer()
    events = fields.List(fields.Nested(SessionEventSchema))
