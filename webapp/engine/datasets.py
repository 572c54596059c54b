"""Evaluation inputs: the user's .npz (`x` or one array per input, optional `y` and
`sample_axes`), or inputs made from the spec."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import screening
from .errors import DatasetRejected
from .loading import InputSpec

GENERATED_SAMPLES = 256
MAX_SAMPLES = 100_000
# `x` (a single-input model's inputs), one array per input name, `y` (labels) and
# `sample_axes` (which axis of each input counts samples; -1: none, fed whole).
MEMBERS = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,127}")
AXES = "sample_axes"
# Ground truth for the detection and CTC metrics (metrics.py): each sample's boxes
# [samples, K, 4] as corners, in the model's own coordinates, with their classes
# [samples, K] (a class below 0 pads a row), and each sample's token sequence [samples, L]
# (0, CTC's blank, or below pads it).
BOXES, BOX_CLASSES, SEQUENCES = "y_boxes", "y_box_classes", "y_sequences"
TRUTH = (BOXES, BOX_CLASSES, SEQUENCES)
# The truth is walked sample by sample in Python, where a value costs several times its
# bytes: it gets a budget of its own, far below the inputs' (8M values as int64).
MAX_TRUTH_BYTES = 64 << 20
# Class ids and tokens: a uint64 above int64 would wrap, so their range is checked.
TRUTH_IDS = np.iinfo(np.int32)
FIT_SLICE = 1 << 20  # values checked at a time against an input's type
DEFAULT_MAX_BYTES = screening.MAX_UNPACKED_BYTES


@dataclass
class EvalData:
    inputs: dict[str, np.ndarray]  # one array per model input
    labels: np.ndarray | None
    source: str  # "dataset" or "generated"
    # Each input's sample axis; None for an input fed whole with every batch (a recurrent
    # state, a sample rate). Inputs not named count samples along axis 0.
    axes: dict[str, int | None] = field(default_factory=dict)
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # TRUTH arrays given

    def axis(self, name: str) -> int | None:
        return self.axes.get(name, 0)

    @property
    def count(self) -> int:
        for name, array in self.inputs.items():
            axis = self.axis(name)
            if axis is not None:
                return array.shape[axis]
        return 1

    def take(self, start: int, stop: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Samples start..stop of every input, repeating the last to `pad_to` samples."""
        feeds = {}
        for name, array in self.inputs.items():
            axis = self.axis(name)
            if axis is None:
                feeds[name] = array
                continue
            part = np.take(array, range(start, min(stop, self.count)), axis=axis)
            if pad_to is not None and part.shape[axis] < pad_to:
                last = np.take(part, [-1], axis=axis)
                part = np.concatenate(
                    [part, np.repeat(last, pad_to - part.shape[axis], axis=axis)], axis=axis
                )
            feeds[name] = np.ascontiguousarray(part)
        return feeds

    def select(self, names: list[str]) -> EvalData:
        """The same data for these inputs only."""
        return EvalData(
            {n: self.inputs[n] for n in names},
            self.labels,
            self.source,
            {n: self.axis(n) for n in names},
            self.truth,
        )

    def renamed(self, names: list[str]) -> EvalData:
        """The same data for inputs renamed in order (an exporter may rename them)."""
        old = list(self.inputs)
        return EvalData(
            {new: self.inputs[o] for new, o in zip(names, old, strict=True)},
            self.labels,
            self.source,
            {new: self.axis(o) for new, o in zip(names, old, strict=True)},
            self.truth,
        )


def input_specs(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[InputSpec]:
    """Inputs as the .npz's headers show them, for a model that records none (TorchScript):
    one per array but 'y' and 'sample_axes', its first dimension left open to count
    samples, its numbers float32, int64 or bool by kind. A 0-d array is a number fed whole."""
    specs = []
    for name, (shape, dtype) in screening.npz_headers(path, MEMBERS, max_bytes).items():
        if name in ("y", AXES, *TRUTH):
            continue
        kind = "bool" if dtype.kind == "b" else "int64" if dtype.kind in "iu" else "float32"
        specs.append(InputSpec(name, [None, *shape[1:]] if shape else [], kind))
    if not specs:
        raise DatasetRejected(
            "The evaluation .npz holds no inputs: name them 'x', or after the model's inputs."
        )
    return specs


def _read(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The .npz's arrays named in `names`, once screening.check_npz has passed the file."""
    arrays = {}
    try:
        for info in screening.zip_members(path, DatasetRejected):
            name = info.filename.removesuffix(".npy")
            if name not in names:
                continue
            with screening.open_member(path, info, DatasetRejected) as member:
                # allow_pickle=False: object arrays (pickles) are refused, never loaded.
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                screening.unpack_rest(member)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetRejected(
            "The evaluation data is not a readable .npz file of plain numeric arrays."
        ) from exc
    return arrays


def _members_for_inputs(members: set[str], specs: list[InputSpec]) -> dict[str, str]:
    """Which array of the .npz feeds each model input: {input name: array name}."""
    names = [spec.name for spec in specs]
    found = {name: name for name in names if name in members}
    missing = [name for name in names if name not in members]
    # 'x' feeds the one input no array is named after (the model's only input, say).
    if len(missing) == 1 and "x" in members and "x" not in names:
        found[missing.pop()] = "x"
    if missing:
        wanted = "'x' or " + repr(names[0]) if len(names) == 1 else ", ".join(repr(n) for n in names)
        raise DatasetRejected(
            f"The evaluation .npz needs one array per model input ({wanted}); "
            f"missing: {', '.join(repr(m) for m in missing)}."
        )
    extra = sorted(members - set(found.values()) - {"y", AXES, *TRUTH})
    if extra:
        raise DatasetRejected(
            f"The evaluation .npz holds {', '.join(repr(e[:60]) for e in extra)}, which is not an input "
            f"of the model (its inputs: {', '.join(repr(n) for n in names)})."
        )
    return found


def default_axes(specs: list[InputSpec]) -> dict[str, int | None]:
    """Each input's sample axis when none is declared: its open dimension (the batch, even
    where it is not first, as in a recurrent state [layers, batch, size]), else axis 0;
    none for a scalar."""
    return {
        spec.name: next((i for i, d in enumerate(spec.shape) if d is None), 0 if spec.shape else None)
        for spec in specs
    }


def _axes(declared: np.ndarray | None, specs: list[InputSpec]) -> dict[str, int | None]:
    if declared is None:
        return default_axes(specs)
    if declared.ndim != 1 or len(declared) != len(specs) or not np.issubdtype(declared.dtype, np.integer):
        raise DatasetRejected(
            f"'{AXES}' must be {len(specs)} whole numbers, one per model input in order "
            "(the axis that counts samples, or -1 for an input fed whole to every batch)."
        )
    axes: dict[str, int | None] = {}
    for spec, axis in zip(specs, declared.tolist(), strict=True):
        if axis != -1 and not 0 <= axis < len(spec.shape):
            raise DatasetRejected(
                f"'{AXES}' gives input {spec.name!r} axis {axis}, but it has {len(spec.shape)} dimensions."
            )
        axes[spec.name] = None if axis == -1 else axis
    return axes


def _sample_count(
    shapes: dict[str, tuple], sources: dict[str, str], specs: list[InputSpec], axes: dict[str, int | None]
) -> int:
    """The number of samples the arrays' headers declare, once each input's shape is
    checked against the model's: judged before any large array is unpacked."""
    counts = set()
    for spec in specs:
        shape = shapes[sources[spec.name]]
        shown = repr(sources[spec.name])
        if len(shape) != len(spec.shape):
            raise DatasetRejected(
                f"{shown} has shape {list(shape)} but the model's input {spec.name!r} has "
                f"{len(spec.shape)} dimensions {spec.shape}."
            )
        axis = axes[spec.name]
        for dim, (have, want) in enumerate(zip(shape, spec.shape, strict=True)):
            if dim != axis and want is not None and have != want:
                raise DatasetRejected(
                    f"{shown} has shape {list(shape)} but the model's input {spec.name!r} expects "
                    f"{spec.shape}: dimension {dim} is {have}, not {want}."
                )
        if axis is not None:
            counts.add(shape[axis])
    if len(counts) > 1:
        raise DatasetRejected(f"The inputs hold different numbers of samples: {sorted(counts)}.")
    count = counts.pop() if counts else 1
    if not 1 <= count <= MAX_SAMPLES:
        raise DatasetRejected(f"The evaluation data must hold between 1 and {MAX_SAMPLES} samples.")
    labels = shapes.get("y")
    if labels is not None and (len(labels) != 1 or labels[0] != count):
        raise DatasetRejected(f"'y' must be one label per sample: {count} values, got shape {list(labels)}.")
    _check_truth_shapes(shapes, count)
    return count


def _check_truth_shapes(shapes: dict[str, tuple], count: int) -> None:
    boxes, classes, sequences = (shapes.get(name) for name in TRUTH)
    if (boxes is None) != (classes is None):
        raise DatasetRejected(f"'{BOXES}' and '{BOX_CLASSES}' come together: the boxes and their classes.")
    if boxes is not None and (len(boxes) != 3 or boxes[0] != count or boxes[2] != 4 or not boxes[1]):
        raise DatasetRejected(
            f"'{BOXES}' must be [{count}, boxes, 4] (corners per box, at least one box a sample; "
            f"a class below 0 pads a row), got {list(boxes)}."
        )
    if boxes is not None and classes is not None and tuple(classes) != tuple(boxes[:2]):
        raise DatasetRejected(
            f"'{BOX_CLASSES}' must be one class per box, {list(boxes[:2])}, got {list(classes)}."
        )
    if sequences is not None and (len(sequences) != 2 or sequences[0] != count or not sequences[1]):
        raise DatasetRejected(
            f"'{SEQUENCES}' must be [{count}, length] (tokens, padded with 0; length at least 1), "
            f"got {list(sequences)}."
        )
    values = sum(math.prod(shapes[name]) for name in TRUTH if name in shapes)
    if values * 8 > MAX_TRUTH_BYTES:
        raise DatasetRejected(
            f"The ground truth ({', '.join(repr(n) for n in TRUTH if n in shapes)}) holds {values:,} "
            f"values; it may hold at most {MAX_TRUTH_BYTES // 8:,}."
        )


def _truth(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    truth = {name: arrays[name] for name in TRUTH if name in arrays}
    boxes = truth.get(BOXES)
    if boxes is not None:
        if boxes.dtype == np.bool_ or not np.issubdtype(boxes.dtype, np.number):
            raise DatasetRejected(f"'{BOXES}' must hold numbers (box corners), not {boxes.dtype}.")
        if not np.isfinite(boxes).all():
            raise DatasetRejected(f"'{BOXES}' must hold finite numbers.")
    for name in (BOX_CLASSES, SEQUENCES):
        if name not in truth:
            continue
        ids = truth[name]
        if not np.issubdtype(ids.dtype, np.integer):
            raise DatasetRejected(f"'{name}' must hold whole numbers.")
        if ids.size and not (TRUTH_IDS.min <= ids.min() and ids.max() <= TRUTH_IDS.max):
            raise DatasetRejected(
                f"'{name}' must hold whole numbers from {TRUTH_IDS.min:,} to {TRUTH_IDS.max:,}."
            )
        truth[name] = ids.astype(np.int64)
    return truth


def _exactly(array: np.ndarray, spec: InputSpec, shown: str) -> np.ndarray:
    """`array` as the input's type, refused where a value would change on the way to an
    integer or bool input: a uint64 above int64 would wrap, 1e300 has no int64, 5 is no
    bool. (Float inputs take values as the nearest float, as any float model does.)"""
    target = np.dtype(spec.dtype)
    if target.kind not in "iub" or array.dtype == target or not array.size:
        return array.astype(target, copy=False)
    # A slice at a time: the array may be most of the evaluation data's memory.
    flat = array.ravel(order="K")
    for start in range(0, flat.size, FIT_SLICE):
        misfit = _misfit(flat[start : start + FIT_SLICE], target)
        if misfit is not None:
            raise DatasetRejected(
                f"{shown} holds {misfit}, which the model's input {spec.name!r} ({target}) cannot "
                "take exactly."
            )
    return array.astype(target)


def _misfit(values: np.ndarray, target: np.dtype):
    """The first of `values` that `target` cannot hold exactly, or None."""
    if target.kind == "b":
        fits = (values == 0) | (values == 1)
    elif values.dtype.kind != "f":
        info = np.iinfo(target)
        fits = (values >= info.min) & (values <= info.max)
    else:
        info = np.iinfo(target)
        # The float above info.max is the first one out of range (2**63 for int64); NaN
        # and the infinities fail every comparison.
        with np.errstate(invalid="ignore"):
            fits = (values == np.floor(values)) & (values >= info.min) & (values < float(info.max) + 1)
    if fits.all():
        return None
    return values[np.argmin(fits)].item()


def load_npz(path: Path, specs: list[InputSpec], max_bytes: int = DEFAULT_MAX_BYTES) -> EvalData:
    """Read and check an evaluation .npz against the model's inputs. Names, shapes and the
    sample count are checked from the arrays' headers first, so a small file that unpacks
    to a large array of the wrong shape is refused without being unpacked."""
    shapes = screening.check_npz(path, MEMBERS, max_bytes)
    sources = _members_for_inputs(set(shapes), specs)
    axes = _axes(_read(path, {AXES}).get(AXES) if AXES in shapes else None, specs)
    _sample_count(shapes, sources, specs, axes)
    arrays = _read(path, set(sources.values()) | {"y", *TRUTH})
    inputs = {}
    for spec in specs:
        array = arrays[sources[spec.name]]
        shown = repr(sources[spec.name])
        if array.dtype.kind not in "biuf":  # complex too: its imaginary part would be dropped
            raise DatasetRejected(f"{shown} must be numeric, not {array.dtype}.")
        array = _exactly(array, spec, shown)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise DatasetRejected(f"{shown} contains NaN or infinite values.")
        inputs[spec.name] = array
    labels = arrays.get("y")
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise DatasetRejected("'y' must hold integer class labels.")
    return EvalData(inputs, labels, "dataset", axes, _truth(arrays))


def generate(specs: list[InputSpec], count: int = GENERATED_SAMPLES, seed: int = 0) -> EvalData:
    """Inputs made from the spec when the user gave no data: standard normal floats,
    `count` samples along each input's sample axis."""
    rng = np.random.default_rng(seed)
    axes = default_axes(specs)
    inputs = {}
    for spec in specs:
        axis = axes[spec.name]
        shape = [count if i == axis else (d if d is not None else 1) for i, d in enumerate(spec.shape)]
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            inputs[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
    return EvalData(inputs, None, "generated", axes)
