"""Evaluation inputs: the user's .npz (x, optional y), or inputs made from the spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import screening
from .errors import DatasetRejected
from .loading import InputSpec

GENERATED_SAMPLES = 256
MAX_SAMPLES = 100_000
MEMBERS = {"x", "y"}
DEFAULT_MAX_BYTES = screening.MAX_UNPACKED_BYTES


@dataclass
class EvalData:
    inputs: dict[str, np.ndarray]  # one array per model input, first axis = samples
    labels: np.ndarray | None
    source: str  # "dataset" or "generated"

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))


def input_shape(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[int]:
    """The shape of 'x', from its header alone."""
    shapes = screening.check_npz(path, MEMBERS, max_bytes)
    if "x" not in shapes:
        raise DatasetRejected("The evaluation .npz needs an array named 'x' (the inputs).")
    return list(shapes["x"])


def load_npz(path: Path, specs: list[InputSpec], max_bytes: int = DEFAULT_MAX_BYTES) -> EvalData:
    """Read and check an evaluation .npz against the model's inputs."""
    screening.check_npz(path, MEMBERS, max_bytes)
    arrays = {}
    try:
        for info in screening.zip_members(path, DatasetRejected):
            with screening.open_member(path, info, DatasetRejected) as member:
                # allow_pickle=False: object arrays (pickles) are refused, never loaded.
                arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(
                    member, allow_pickle=False
                )
                screening.unpack_rest(member)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetRejected(
            "The evaluation data is not a readable .npz file of plain numeric arrays."
        ) from exc
    if "x" not in arrays:
        raise DatasetRejected("The evaluation .npz needs an array named 'x' (the inputs).")
    if len(specs) != 1:
        raise DatasetRejected("Evaluation data is supported for single-input models.")
    spec = specs[0]
    x = arrays["x"]
    if x.ndim != len(spec.shape):
        raise DatasetRejected(
            f"'x' has shape {list(x.shape)} but the model's input {spec.name!r} has "
            f"{len(spec.shape)} dimensions {spec.shape} (the first one counts samples)."
        )
    for axis, (have, want) in enumerate(zip(x.shape[1:], spec.shape[1:], strict=True), start=1):
        if want is not None and have != want:
            raise DatasetRejected(
                f"'x' has shape {list(x.shape)} but the model's input {spec.name!r} expects "
                f"{spec.shape}: dimension {axis} is {have}, not {want}."
            )
    if not 1 <= len(x) <= MAX_SAMPLES:
        raise DatasetRejected(f"'x' must hold between 1 and {MAX_SAMPLES} samples.")
    if not np.issubdtype(x.dtype, np.number):
        raise DatasetRejected(f"'x' must be numeric, not {x.dtype}.")
    x = x.astype(spec.dtype, copy=False)
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DatasetRejected("'x' contains NaN or infinite values.")
    labels = arrays.get("y")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(x):
            raise DatasetRejected(
                f"'y' must be one label per sample: {len(x)} values, got shape {list(labels.shape)}."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DatasetRejected("'y' must hold integer class labels.")
    return EvalData({spec.name: x}, labels, "dataset")


def generate(specs: list[InputSpec], count: int = GENERATED_SAMPLES, seed: int = 0) -> EvalData:
    """Inputs made from the spec when the user gave no data: standard normal floats."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        shape = [count] + [d if d is not None else 1 for d in spec.shape[1:]]
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            inputs[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
    return EvalData(inputs, None, "generated")
