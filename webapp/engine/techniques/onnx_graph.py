"""Small helpers to find and replace weight initializers in an ONNX graph."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# Operators whose second input is a weight matrix (or kernel) worth touching.
WEIGHT_OPS = {"MatMul", "Gemm", "Conv"}


@dataclass
class WeightUse:
    node: onnx.NodeProto
    initializer: onnx.TensorProto


def load_with_weights(path, min_rank: int = 2) -> onnx.ModelProto:
    """The model, with weights stored as `Constant` nodes (Paddle's exporter writes them so)
    turned into initializers, where the techniques look for weights: float tensors of
    `min_rank` dimensions or more (1 takes biases and batch norm parameters too)."""
    model = onnx.load(str(path))
    for node in list(model.graph.node):
        if node.op_type != "Constant" or len(node.output) != 1:
            continue
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == a.TENSOR), None)
        if value is None or value.data_type != onnx.TensorProto.FLOAT or len(value.dims) < min_rank:
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        model.graph.node.remove(node)
    return model


def weight_uses(model: onnx.ModelProto, ops=WEIGHT_OPS) -> list[WeightUse]:
    """Float initializers fed as the weight input of `ops`, each used by one node only."""
    initializers = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    uses = Counter(name for node in model.graph.node for name in node.input)
    found = []
    for node in model.graph.node:
        if node.op_type not in ops or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = initializers.get(name)
        if tensor is None or name in graph_inputs or uses[name] != 1:
            continue
        if tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) < 2:
            continue
        found.append(WeightUse(node, tensor))
    return found


def replace_initializer(
    model: onnx.ModelProto, old: onnx.TensorProto, array: np.ndarray, name: str | None = None
) -> str:
    """Put `array` in place of `old` (under `name`, or the old name)."""
    new = numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name or old.name)
    model.graph.initializer.remove(old)
    model.graph.initializer.append(new)
    return new.name


def add_initializer(model: onnx.ModelProto, array: np.ndarray, name: str) -> str:
    model.graph.initializer.append(
        numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)
    )
    return name


def unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = {t.name for t in model.graph.initializer}
    taken |= {name for node in model.graph.node for name in (*node.input, *node.output)}
    candidate, n = base, 0
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def save_graph_optimizations(path: Path) -> bool:
    """Rewrite the model at `path` with ONNX Runtime's basic graph optimizations saved into
    it (constant folding, redundant nodes removed, Conv with BatchNorm, Add or Mul fused),
    and say whether it did (only when they took nodes away). Those hold on any hardware and
    execution provider; the extended and layout levels tie a file to one, so ONNX Runtime
    applies them at load.

    The quantizations get the same from ORT's pre-processing; this serves the techniques
    that write their graph themselves. A file that ORT cannot optimize, or that folding
    would make larger, stays as it is.
    """
    import onnxruntime as ort

    target = path.with_name(f"{path.stem}.optimized{path.suffix}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        before, after = (onnx.load(str(p), load_external_data=False) for p in (path, target))
        removed = len(before.graph.node) - len(after.graph.node)
        # ORT's writer adds a few hundred bytes of its own; folding a big constant adds more.
        grown = target.stat().st_size - path.stat().st_size
        keep = removed > 0 and grown <= max(path.stat().st_size // 100, 4096)
    except Exception:  # an optimization: the step's own file is still right
        logging.getLogger(__name__).info("graph optimizations not saved for %s", path.name, exc_info=True)
        keep = False
    if not keep:
        target.unlink(missing_ok=True)
        return False
    os.replace(target, path)
    return True


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [
        graph
        for attr in node.attribute
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
    ]


def _reads(node: onnx.NodeProto) -> set[str]:
    """What a node reads: its inputs, and what its branches and loop bodies read from the
    graph around them (ONNX lets a subgraph name an outer tensor without declaring it)."""
    names = set(node.input)
    for graph in _subgraphs(node):
        inner = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
        for child in graph.node:
            names |= _reads(child) - inner
            inner |= set(child.output)
    return names - {""}


def sort_topologically(model: onnx.ModelProto) -> bool:
    """Reorder the main graph's nodes so that each comes after everything it reads, its
    subgraphs' outer reads included, keeping the original order where it can. ONNX Runtime's
    quantizer leaves a node after an If branch that reads it; ORT sorts at load, but ONNX's
    checker (and so the trusted side) refuses the file. Returns whether anything moved."""
    nodes = list(model.graph.node)
    produced = {output for node in nodes for output in node.output}
    ready = {value.name for value in model.graph.input} | {t.name for t in model.graph.initializer}
    reads = [_reads(node) & produced for node in nodes]
    ordered: list[int] = []
    pending = list(range(len(nodes)))
    while pending:
        index = next((i for i in pending if reads[i] <= ready), None)
        if index is None:
            return False  # a cycle, or a read of nothing: left for the checker to name
        pending.remove(index)
        ordered.append(index)
        ready |= set(nodes[index].output)
    if ordered == list(range(len(nodes))):
        return False
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in ordered)
    return True
