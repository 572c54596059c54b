"""The technique registry: the one place a technique is described.

Each technique's work lives in a module of its own (quantization.py, pruning.py,
lowrank.py) with one function the registry calls. Its entry below gives its id, label,
one-line summary, plan order, parameters and the most it can take off a float32
model's size on disk. The parameters are a marshmallow schema whose fields carry their
ranges (validators), their words (metadata `label`, `description`) and, where the
optimization criteria hold a default for them, the criteria key (metadata `criteria`).

Everything else reads this: the planner, the criteria schema and its conflict rules,
the criteria page, the start form and its help, the API's descriptions and the test
that holds config.toml's comments to it. Adding a technique is one module plus one
entry in TECHNIQUES (tests/engine/test_registry.py shows it with a throwaway one).

Every technique runs on ONNX; PyTorch formats are exported to ONNX first, so each
technique supports all three upload formats. What is not listed here (distillation,
architecture search) is not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from .. import formats

# The technique modules import onnx and onnxruntime; they load only where a technique
# runs (a worker), not where parameters are checked (the web process).


OP_TYPES = {
    "all": ("every operator ONNX Runtime quantizes", None),
    "conv": ("Conv only", ("Conv",)),
    "matmul": ("MatMul/Gemm only", ("MatMul", "Gemm")),
    "conv_matmul": ("Conv and MatMul/Gemm", ("Conv", "MatMul", "Gemm")),
}
CALIBRATIONS = {"minmax": "min-max", "entropy": "entropy", "percentile": "percentile"}
QUANT_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}


# How many nodes one int8 step may leave in float (exclude_nodes).
MAX_FLOAT_NODES = 256


class QuantizationParams(Schema):
    mode = fields.String(
        load_default="int8_dynamic",
        validate=validate.OneOf(
            ("int8_dynamic", "int8_static", "fp16", "int4_weights"),
            labels=(
                "int8 dynamic",
                "int8 static (needs evaluation data)",
                "fp16 weights",
                "int4 weights (MatMul only)",
            ),
        ),
        metadata={
            "label": "mode",
            "description": "int8 static calibrates on the model's evaluation data; fp16 halves the weights",
            "criteria": "quantization_mode",
        },
    )
    # The finer choices the search explores; the API takes them too. Left out, a step runs
    # the plain recipe: every operator, QDQ, min-max, nothing left in float.
    op_types = fields.String(
        validate=validate.OneOf(tuple(OP_TYPES), labels=tuple(label for label, _ in OP_TYPES.values())),
        metadata={"label": "operators", "description": "which operators int8 covers", "form": False},
    )
    calibration = fields.String(
        validate=validate.OneOf(tuple(CALIBRATIONS), labels=tuple(CALIBRATIONS.values())),
        metadata={"label": "calibration", "description": "how int8 static picks ranges", "form": False},
    )
    format = fields.String(
        validate=validate.OneOf(tuple(QUANT_FORMATS), labels=tuple(QUANT_FORMATS.values())),
        metadata={"label": "format", "description": "how int8 static writes the graph", "form": False},
    )
    # Nodes left in float: those the search's accuracy-aware fallback (fallback.py) finds
    # int8 must spare for the task metric to hold.
    exclude_nodes = fields.List(
        fields.String(validate=validate.Length(min=1, max=256)),
        validate=validate.Length(max=MAX_FLOAT_NODES),
        metadata={
            "label": "nodes kept in float",
            "description": "node names int8 leaves alone",
            "form": False,
        },
    )


class PruningParams(Schema):
    # Left out: magnitude pruning of single weights, the plain recipe.
    structure = fields.String(
        validate=validate.OneOf(
            ("weights", "neurons", "channels"),
            labels=(
                "single weights (magnitude; shrinks the compressed file)",
                "whole neurons (shrinks the model)",
                "whole convolution channels (shrinks the model)",
            ),
        ),
        metadata={
            "label": "structure",
            "description": (
                "single weights set to zero, hidden units removed between dense layers, "
                "or channels removed between convolutions"
            ),
            "form": False,
        },
    )
    sparsity = fields.Float(
        load_default=0.5,
        allow_nan=False,
        validate=validate.Range(min=0.05, max=0.95),
        metadata={
            "label": "sparsity",
            "description": "share of weights set to zero (shrinks the compressed file, not the dense one)",
            "criteria": "pruning_sparsity",
        },
    )


class CompressionParams(Schema):
    energy = fields.Float(
        allow_nan=False,
        validate=validate.Range(min=0.5, max=0.9999),
        metadata={
            "label": "energy kept",
            "description": "share of each dense layer's spectral energy kept",
            "criteria": "compression_energy",
        },
    )
    # A layer with both sides past this holds 4 billion weights: bigger than any upload.
    rank = fields.Integer(
        validate=validate.Range(min=1, max=65_536),
        metadata={
            "label": "rank",
            "description": "fixed rank of each factorized layer (API only)",
            "form": False,
        },
    )

    @validates_schema
    def _one_of(self, data, **kwargs):
        if "energy" in data and "rank" in data:
            raise ValidationError("Give energy or rank, not both.", "rank")

    @post_load
    def _default_energy(self, data, **kwargs):
        if "energy" not in data and "rank" not in data:
            data["energy"] = 0.95
        return data


@dataclass(frozen=True)
class Param:
    """One parameter as forms and help texts show it, read from its schema field."""

    name: str
    label: str
    description: str
    kind: str  # "number", "integer", "choice" or "list" (of names)
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[tuple[str, str], ...] = ()
    criteria: str | None = None
    on_form: bool = True

    @property
    def range_text(self) -> str:
        if self.kind == "choice":
            return ", ".join(label for _, label in self.choices)
        if self.kind == "list":
            return "a list of names"
        return f"{self.minimum:g} to {self.maximum:g}"

    @property
    def help(self) -> str:
        """What the forms say under the field."""
        if self.kind == "choice":
            return self.description[:1].upper() + self.description[1:] + "."
        return f"{self.range_text}: {self.description}."


def _param(name: str, schema_field: fields.Field) -> Param:
    meta = schema_field.metadata
    found = {
        "name": name,
        "label": meta.get("label", name),
        "description": meta.get("description", ""),
        "criteria": meta.get("criteria"),
        "on_form": meta.get("form", True),
    }
    for validator in schema_field.validators:
        if isinstance(validator, validate.OneOf):
            found.update(kind="choice", choices=tuple(validator.options()))
        elif isinstance(validator, validate.Range):
            found.update(minimum=validator.min, maximum=validator.max)
    if isinstance(schema_field, fields.List):
        found["kind"] = "list"
    found.setdefault("kind", "integer" if isinstance(schema_field, fields.Integer) else "number")
    return Param(**found)


@dataclass(frozen=True)
class Technique:
    id: str
    label: str
    summary: str
    order: int  # factorize, then prune, then quantize: each works on float weights
    params: type[Schema]
    apply: Callable[..., dict]
    # The most it can take off a float32 model's size on disk, in percent, given its
    # parameters: what makes a criteria's size target reachable or not.
    best_size_reduction: Callable[[dict], float]
    formats: tuple[str, ...] = formats.FORMATS
    # Parameters given in a request replace the criteria's defaults for it instead of
    # adding to them (compression takes energy or rank, never both).
    given_replaces_defaults: bool = False
    # Whether it may change the model's outputs (and so can break an accuracy target).
    lossy: bool = True
    # The parameter whose value, as given, needs the model's evaluation data (to
    # calibrate on), or None: such a plan is refused for a model without data.
    needs_data: Callable[[dict], str | None] = lambda params: None
    param_list: tuple[Param, ...] = field(init=False)

    def __post_init__(self):
        declared = self.params().fields
        object.__setattr__(self, "param_list", tuple(_param(n, f) for n, f in declared.items()))

    def criteria_defaults(self, criteria: dict) -> dict:
        """Its parameters as the optimization criteria set them."""
        return {p.name: criteria[p.criteria] for p in self.param_list if p.criteria}

    @property
    def form_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.param_list if p.on_form)


def _quantize(src: Path, dst: Path, params: dict, data, batch: int, check) -> dict:
    from . import quantization

    return quantization.quantize(src, dst, params, data, batch, check)


def _prune(src: Path, dst: Path, params: dict, data, batch, check) -> dict:
    from . import channels, onnx_graph, pruning

    if params.get("structure") == "channels":
        details = channels.prune_channels(src, dst, params["sparsity"])
    else:
        details = pruning.prune(src, dst, params["sparsity"], params.get("structure", "weights"))
    details["graph_optimizations_saved"] = onnx_graph.save_graph_optimizations(dst)
    return details


def _compress(src: Path, dst: Path, params: dict, data, batch, check) -> dict:
    from . import lowrank, onnx_graph

    details = lowrank.compress(src, dst, energy=params.get("energy"), rank=params.get("rank"))
    details["graph_optimizations_saved"] = onnx_graph.save_graph_optimizations(dst)
    return details


TECHNIQUES: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    TECHNIQUES[technique.id] = technique
    return technique


register(
    Technique(
        "compression",
        "Low-rank compression",
        "factor large dense layers into two thin ones (SVD)",
        1,
        CompressionParams,
        _compress,
        lambda params: 95.0,
        given_replaces_defaults=True,
    )
)
# Zeros are written densely: magnitude pruning takes nothing off the file itself, only off
# its archive; removing neurons or channels takes their share of those layers off.
register(
    Technique(
        "pruning",
        "Pruning",
        "set the smallest weights to zero, or remove whole neurons or channels",
        2,
        PruningParams,
        _prune,
        lambda params: (
            95.0 * params["sparsity"] if params.get("structure") in ("neurons", "channels") else 0.0
        ),
    )
)
register(
    Technique(
        "quantization",
        "Quantization",
        "store and compute weights in fewer bits (ONNX Runtime)",
        3,
        QuantizationParams,
        _quantize,
        lambda params: {"fp16": 50.0, "int4_weights": 87.5}.get(params["mode"], 75.0),
        needs_data=lambda params: "mode" if params["mode"] == "int8_static" else None,
    )
)


def criteria_params() -> list[tuple[Technique, Param]]:
    """The parameters the optimization criteria hold a default for, in plan order."""
    return [
        (t, p) for t in sorted(TECHNIQUES.values(), key=lambda t: t.order) for p in t.param_list if p.criteria
    ]
