"""The techniques the engine really has, their parameters and what they accept.

Every technique runs on ONNX; PyTorch formats are exported to ONNX first, so
each technique below supports all three upload formats. What is not listed
here (distillation, architecture search) is not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from .. import formats

# The technique modules import onnx and onnxruntime; they load only where a
# technique runs (a worker), not where parameters are checked (the web process).
QUANTIZATION_MODES = ("int8_dynamic", "int8_static", "fp16")


class QuantizationParams(Schema):
    mode = fields.String(
        load_default="int8_dynamic",
        validate=validate.OneOf(QUANTIZATION_MODES),
        metadata={
            "description": "int8_dynamic, int8_static (calibrates on the model's evaluation data) or fp16"
        },
    )


class PruningParams(Schema):
    sparsity = fields.Float(
        load_default=0.5,
        allow_nan=False,
        validate=validate.Range(min=0.05, max=0.95),
        metadata={"description": "Share of weights set to zero, 0.05 to 0.95"},
    )


class CompressionParams(Schema):
    energy = fields.Float(
        allow_nan=False,
        validate=validate.Range(min=0.5, max=0.9999),
        metadata={"description": "Share of spectral energy kept, 0.5 to 0.9999"},
    )
    # A layer with both sides past this holds 4 billion weights: bigger than any upload.
    rank = fields.Integer(
        validate=validate.Range(min=1, max=65_536),
        metadata={"description": "Fixed rank of each factorized layer"},
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
class Technique:
    id: str
    label: str
    order: int  # factorize, then prune, then quantize: each works on float weights
    formats: tuple[str, ...]
    params: type[Schema]
    apply: Callable[..., dict]


def _quantize(src: Path, dst: Path, params: dict, data, batch: int, check) -> dict:
    from . import quantization

    return quantization.quantize(src, dst, params["mode"], data, batch, check)


def _prune(src: Path, dst: Path, params: dict, data, batch, check) -> dict:
    from . import pruning

    return pruning.prune(src, dst, params["sparsity"])


def _compress(src: Path, dst: Path, params: dict, data, batch, check) -> dict:
    from . import lowrank

    return lowrank.compress(src, dst, energy=params.get("energy"), rank=params.get("rank"))


TECHNIQUES: dict[str, Technique] = {
    t.id: t
    for t in (
        Technique("compression", "Low-rank compression", 1, formats.FORMATS, CompressionParams, _compress),
        Technique("pruning", "Magnitude pruning", 2, formats.FORMATS, PruningParams, _prune),
        Technique("quantization", "Quantization", 3, formats.FORMATS, QuantizationParams, _quantize),
    )
}
