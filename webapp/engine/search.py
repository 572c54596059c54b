"""The search: configurations of the allowed techniques, each measured against the original,
and the trade-off front among them.

`space` lists what to try for one model, likely winners first so that a short budget still
finds them; the runner applies each configuration to the original, measures it and hands
the list to `front`, which marks the candidates no other beats on size, latency and
accuracy at once and picks the one the criteria's weights prefer.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from marshmallow import ValidationError

from .techniques import CALIBRATIONS, OP_TYPES, QUANT_FORMATS, TECHNIQUES

AUTO = "auto"
# Operators ORT's static quantizer also covers beyond Conv and MatMul/Gemm: when a model has
# some, "Conv and MatMul/Gemm only" differs from "all" (INC's fallback of Add/Mul, say).
OTHER_QUANTIZED = {
    "Add",
    "Mul",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Relu",
    "Sigmoid",
    "Softmax",
    "Resize",
    "Transpose",
    "Reshape",
    "Gather",
    "Split",
    "Where",
    "LeakyRelu",
    "Clip",
    "Pad",
    "Squeeze",
    "Unsqueeze",
}
LOW_RANK_ENERGIES = (0.99, 0.95, 0.9)
NEURON_SHARES = (0.1, 0.25)
CHANNEL_SHARES = (0.1, 0.25)
# Files a search hands back (the chosen one and the best of the front): each is checked
# on the trusted side before it is stored.
MAX_KEPT = 16


@dataclass
class Configuration:
    steps: list[dict]  # [{"technique": id, "params": {...}}] in plan order

    @property
    def words(self) -> str:
        return " + ".join(describe(step) for step in self.steps) or "original"


def describe(step: dict) -> str:
    """One step in words: "int8 static, Conv only, QDQ, percentile calibration". A step as
    stored (parameters left to their defaults, or from an older version) reads the same.

    Remembered by the step's JSON: a page of sessions describes the same few steps over and
    over, and loading their parameters through the technique's schema costs most of it."""
    try:
        key = json.dumps(step, sort_keys=True)
    except (TypeError, ValueError):  # not a stored step (values JSON cannot hold)
        return _describe(step)
    return _describe_json(key)


@functools.lru_cache(maxsize=4096)
def _describe_json(key: str) -> str:
    return _describe(json.loads(key))


def _describe(step: dict) -> str:
    technique = step.get("technique")
    given = step.get("params")
    if not isinstance(given, dict):
        given = {}
    if technique == AUTO:
        budget = given.get("budget_minutes")
        budget_words = f", {budget:g} min budget" if isinstance(budget, int | float) and budget else ""
        return "search of every technique the criteria allow" + budget_words
    if not isinstance(technique, str) or technique not in TECHNIQUES:
        return str(technique)[:60]
    try:
        params = TECHNIQUES[technique].params().load(given)
    except ValidationError:
        return TECHNIQUES[technique].label
    if technique == "quantization":
        mode = params["mode"]
        if mode == "fp16":
            return "fp16 weights"
        if mode == "int4_weights":
            return "int4 weights (MatMul)"
        parts = ["int8 dynamic" if mode == "int8_dynamic" else "int8 static"]
        if params.get("op_types", "all") != "all":
            parts.append(OP_TYPES[params["op_types"]][0])
        if mode == "int8_static":
            parts.append(QUANT_FORMATS[params.get("format", "qdq")])
            parts.append(f"{CALIBRATIONS[params.get('calibration', 'minmax')]} calibration")
        if params.get("exclude_nodes"):
            count = len(params["exclude_nodes"])
            parts.append(f"{count} node{'s' if count > 1 else ''} left in float")
        return ", ".join(parts)
    if technique == "compression":
        if "rank" in params:
            return f"low-rank, rank {params['rank']}"
        return f"low-rank, {params['energy'] * 100:g} % energy"
    if technique == "pruning":
        if params.get("structure") == "neurons":
            return f"{params['sparsity'] * 100:g} % of neurons removed"
        if params.get("structure") == "channels":
            return f"{params['sparsity'] * 100:g} % of conv channels removed"
        return f"magnitude pruning {params['sparsity'] * 100:g} %"
    return TECHNIQUES[technique].label


def _step(technique: str, **params) -> dict:
    return {"technique": technique, "params": TECHNIQUES[technique].params().load(params)}


def space(allowed: set[str], op_types: set[str], has_data: bool) -> list[Configuration]:
    """What to try on a model whose graph holds `op_types`, within the allowed techniques,
    likely winners first (a budget may end the search early). On convolutional models
    int8 dynamic of every operator goes last: ONNX Runtime's ConvInteger kernels are slow on
    CPUs (0.1-0.3x in bench/search.py), while static int8 and MatMul-only dynamic win."""
    found: list[Configuration] = []
    conv, matmul = "Conv" in op_types, bool({"MatMul", "Gemm"} & op_types)
    q = "quantization"

    def quantized(**params) -> Configuration:
        return Configuration([_step(q, **params)])

    if "quantization" in allowed and (conv or matmul):
        static = has_data
        dynamic_all = [quantized(mode="int8_dynamic")]
        if not conv:
            found += dynamic_all
        found += [quantized(mode="int8_static")] if static else []
        if conv and matmul:
            found += [quantized(mode="int8_dynamic", op_types="matmul")]
        found += [quantized(mode="int8_static", calibration="percentile")] if static else []
        found += [quantized(mode="fp16")]
        if conv and matmul and static:
            found += [quantized(mode="int8_static", op_types="conv")]
            found += [quantized(mode="int8_static", op_types="matmul")]
        if static and op_types & OTHER_QUANTIZED:
            found += [quantized(mode="int8_static", op_types="conv_matmul")]
        if "MatMul" in op_types:
            found += [quantized(mode="int4_weights")]
        if static:
            found += [
                quantized(mode="int8_static", format="qoperator"),
                quantized(mode="int8_static", calibration="entropy"),
            ]
        if conv:
            found += dynamic_all
    if "pruning" in allowed and matmul:
        found += [Configuration([_step("pruning", structure="neurons", sparsity=s)]) for s in NEURON_SHARES]
    if "pruning" in allowed and conv:
        found += [Configuration([_step("pruning", structure="channels", sparsity=s)]) for s in CHANNEL_SHARES]
    if "compression" in allowed and matmul:
        found += [Configuration([_step("compression", energy=e)]) for e in LOW_RANK_ENERGIES]
    if "pruning" in allowed and (conv or matmul):
        found += [Configuration([_step("pruning", sparsity=0.5)])]
    return found


def combined(first: Configuration, then: Configuration) -> Configuration:
    """Both configurations' steps, in plan order (factorize, prune, then quantize)."""
    steps = sorted(first.steps + then.steps, key=lambda step: TECHNIQUES[step["technique"]].order)
    return Configuration(steps)


def with_float_nodes(configuration: Configuration, nodes: list[str]) -> Configuration:
    """The configuration's int8 step leaving `nodes` in float."""
    steps = [
        {**s, "params": {**s["params"], "exclude_nodes": nodes}} if s["technique"] == "quantization" else s
        for s in configuration.steps
    ]
    return Configuration(steps)


def weighted_score(candidate: dict, criteria: dict) -> float:
    """The criteria's weights over what a candidate gains, each 0..1 at best: accuracy kept,
    the share of latency taken off, the share of size taken off."""
    weights = {
        "accuracy": float(criteria.get("weight_accuracy", 0.5)),
        "latency": float(criteria.get("weight_latency", 0.3)),
        "size": float(criteria.get("weight_size", 0.2)),
    }
    gains = {
        "accuracy": min(candidate["accuracy_retention_percent"], 100.0) / 100,
        "latency": 1 - 1 / candidate["speedup"] if candidate["speedup"] > 0 else -1.0,
        "size": candidate["size_reduction_percent"] / 100,
    }
    total = sum(weights.values()) or 1.0
    return sum(weights[k] * gains[k] for k in weights) / total


def dominates(a: dict, b: dict) -> bool:
    """a is as small, as fast and as accurate as b, and better in one of them. Speed is the
    paired speedup over the original, not the medians: those come from different rounds."""
    no_worse = (
        a["size_bytes"] <= b["size_bytes"]
        and a["speedup"] >= b["speedup"]
        and a["accuracy_retention_percent"] >= b["accuracy_retention_percent"]
    )
    better = (
        a["size_bytes"] < b["size_bytes"]
        or a["speedup"] > b["speedup"]
        or a["accuracy_retention_percent"] > b["accuracy_retention_percent"]
    )
    return no_worse and better


def _zeros_only(candidate: dict) -> bool:
    return any(
        step["technique"] == "pruning" and step["params"].get("structure", "weights") == "weights"
        for step in candidate["steps"]
    )


def meets_targets(candidate: dict, criteria: dict) -> str | None:
    """Why a candidate (above the accuracy floor) misses the criteria's targets, or None."""
    max_ms = float(criteria.get("max_inference_time_ms", 0) or 0)
    if max_ms > 0 and candidate["latency_ms"] > max_ms:
        return f"{candidate['latency_ms']:.3f} ms is above the {max_ms:g} ms target"
    size_target = float(criteria.get("max_size_reduction_percent", 0) or 0)
    if size_target > 0 and candidate["size_reduction_percent"] < size_target:
        return f"{candidate['size_reduction_percent']:.1f} % smaller is short of the {size_target:g} % target"
    return None


def front(candidates: list[dict], criteria: dict) -> tuple[int, str | None]:
    """Mark `pareto`, `kept`, `meets_criteria` and `weighted_score` on every candidate (in
    place) and return the chosen one's index with why the criteria are not met (or None).

    A candidate below the accuracy floor is never kept. Among the rest, those no other
    dominates form the front; the chosen one meets the targets and scores best on the
    weights, or, when none meets them, scores best of all those above the floor.
    """
    minimum = float(criteria.get("min_accuracy_retention_percent", 99.0))
    measured = [c for c in candidates if c.get("latency_ms") is not None]
    above = [c for c in measured if c["accuracy_retention_percent"] >= minimum]
    for c in candidates:
        c["pareto"] = False
        c["kept"] = False
        c["meets_criteria"] = False
        if c.get("latency_ms") is None:
            continue
        c["weighted_score"] = round(weighted_score(c, criteria), 4)
        if c["accuracy_retention_percent"] < minimum:
            retained = c["accuracy_retention_percent"]
            c["reason"] = f"accuracy retention {retained:.2f} % is below the minimum {minimum:g} %"
            continue
        beaten_by = next((o for o in above if o is not c and dominates(o, c)), None)
        c["pareto"] = beaten_by is None
        if beaten_by is not None:
            c["reason"] = (
                f"dominated by #{beaten_by['index']}: as small, at least as large a speedup, as accurate"
            )
        missing = meets_targets(c, criteria)
        c["meets_criteria"] = missing is None
        if missing and not c.get("reason"):
            c["reason"] = missing
        if _zeros_only(c):
            note = "magnitude pruning's zeros are stored densely: only the compressed file shrinks"
            c["reason"] = f"{c['reason']}; {note}" if c.get("reason") else note
    meeting = [c for c in above if c["meets_criteria"]]
    pool = meeting or above
    why: str | None
    if not pool:  # nothing holds the accuracy floor, not even the original's export
        chosen = candidates[0]
        why = "no candidate keeps the minimum accuracy retention"
    else:
        chosen = max(pool, key=lambda c: (c["weighted_score"], -c["index"]))
        why = (
            None
            if meeting
            else f"no candidate meets the targets; best found: {meets_targets(chosen, criteria)}"
        )
    chosen["kept"] = True
    front_ = sorted((c for c in candidates if c["pareto"]), key=lambda c: -c["weighted_score"])
    for rank, c in enumerate(c for c in front_ if c is not chosen):
        c["kept"] = rank < MAX_KEPT - 1
        if not c["kept"]:
            c["reason"] = f"on the front, but a search keeps the {MAX_KEPT} best files only"
    return chosen["index"], why
