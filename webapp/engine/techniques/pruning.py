"""Pruning: global magnitude pruning of weights, or structured pruning of neurons (and of
convolution channels, in channels.py).

Zeros stored densely do not make a file smaller or a CPU kernel faster; magnitude
pruning reports the sparsity reached and the compressed size (what a zip or a
sparse-aware runtime gains), next to the unchanged size on disk. Neuron pruning removes
whole hidden units between two dense layers (a column of the first weight matrix, its
bias and a row of the second), so the matrices, the file and the compute really shrink.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import TechniqueFailed
from .onnx_graph import load_with_weights, replace_initializer, weight_uses


def prune(src: Path, dst: Path, sparsity: float, structure: str = "weights") -> dict:
    if structure == "neurons":
        return prune_neurons(src, dst, sparsity)
    model = load_with_weights(src)
    uses = weight_uses(model)
    if not uses:
        raise TechniqueFailed("The model has no weight matrices or kernels to prune.")
    arrays = [numpy_helper.to_array(use.initializer) for use in uses]
    magnitudes = np.concatenate([np.abs(a).ravel() for a in arrays])
    cut = int(len(magnitudes) * sparsity)
    if cut == 0:
        raise TechniqueFailed("The target sparsity prunes no weight at all.")
    threshold = np.partition(magnitudes, cut - 1)[cut - 1]
    zeros = 0
    for use, array in zip(uses, arrays, strict=True):
        pruned = np.where(np.abs(array) <= threshold, 0.0, array).astype(np.float32)
        zeros += int((pruned == 0).sum())
        replace_initializer(model, use.initializer, pruned)
    onnx.save(model, str(dst))
    return {
        "target_sparsity": sparsity,
        "sparsity_reached": round(zeros / len(magnitudes), 4),
        "pruned_tensors": len(uses),
        "pruned_parameters": int(zeros),
    }


# Element-wise activations a hidden unit passes through on its own: removing the unit
# removes its lane through them too.
ELEMENTWISE = {
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Selu",
    "Softplus",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
}


@dataclass
class Dense:
    """A dense layer: its weight (an initializer), how it is stored, its bias, its output."""

    weight: onnx.TensorProto
    transposed: bool  # stored [out, in] (Gemm transB=1) rather than [in, out]
    bias: onnx.TensorProto | None
    output: str  # after the bias, when the bias is an Add of its own
    node: onnx.NodeProto

    def matrix(self) -> np.ndarray:  # always [in, out]
        array = numpy_helper.to_array(self.weight)
        return array.T if self.transposed else array


def dense_layer(node, inits, consumers, uses) -> Dense | None:
    if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
        return None
    weight = inits[node.input[1]]
    if len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT or uses[weight.name] != 1:
        return None
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Gemm" and attrs.get("transA") is not None and attrs["transA"].i:
        return None
    transposed = node.op_type == "Gemm" and attrs.get("transB") is not None and bool(attrs["transB"].i)
    out = weight.dims[0] if transposed else weight.dims[1]
    bias, output = None, node.output[0]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        bias = inits.get(node.input[2])
        if bias is None or list(bias.dims) != [out] or uses[bias.name] != 1:
            return None
    elif node.op_type == "MatMul" and len(consumers.get(output, [])) == 1:
        add = consumers[output][0]
        other = [name for name in add.input if name != output]
        if add.op_type == "Add" and len(other) == 1 and other[0] in inits:
            candidate = inits[other[0]]
            # skl2onnx writes biases as [1, out]
            if list(candidate.dims) in ([out], [1, out]) and uses[candidate.name] == 1:
                bias, output = candidate, add.output[0]
    return Dense(weight, transposed, bias, output, node)


def _pairs(model: onnx.ModelProto) -> list[tuple[Dense, Dense]]:
    """(first, second) dense layers where the first's output reaches only the second's
    data input, through element-wise activations alone."""
    inits = {t.name: t for t in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    found = []
    for node in model.graph.node:
        first = dense_layer(node, inits, consumers, uses)
        if first is None:
            continue
        tensor = first.output
        while tensor not in outputs and len(consumers.get(tensor, [])) == 1:
            after = consumers[tensor][0]
            if after.op_type in ELEMENTWISE and len(after.input) == 1:
                tensor = after.output[0]
                continue
            second = dense_layer(after, inits, consumers, uses)
            if second is not None and after.input[0] == tensor:
                found.append((first, second))
            break
    return found


def store(model: onnx.ModelProto, tensor: onnx.TensorProto, array: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), tensor.name))


def prune_neurons(src: Path, dst: Path, share: float) -> dict:
    """Remove `share` of the hidden units between each pair of dense layers, those whose
    incoming and outgoing weights matter least (product of the two norms)."""
    model = load_with_weights(src)
    pairs = _pairs(model)
    if not pairs:
        raise TechniqueFailed(
            "No dense layer feeds another through element-wise activations alone; neuron pruning "
            "removes hidden units between such pairs."
        )
    before = parameters(model)
    layers = []
    for first, second in pairs:
        w1, w2 = first.matrix(), second.matrix()
        hidden = w1.shape[1]
        if w2.shape[0] != hidden:
            continue
        keep_count = max(1, int(round(hidden * (1 - share))))
        if keep_count >= hidden:
            continue
        importance = np.linalg.norm(w1, axis=0) * np.linalg.norm(w2, axis=1)
        keep = np.sort(np.argsort(importance)[-keep_count:])
        w1, w2 = w1[:, keep], w2[keep, :]
        store(model, first.weight, w1.T if first.transposed else w1)
        store(model, second.weight, w2.T if second.transposed else w2)
        if first.bias is not None:
            store(model, first.bias, numpy_helper.to_array(first.bias)[..., keep])
        layers.append({"layer": first.node.name or first.weight.name, "neurons": [hidden, keep_count]})
    if not layers:
        raise TechniqueFailed("The hidden layers are too small to remove a unit at this share.")
    return save_narrowed(model, dst, "neurons", share, layers, before)


def save_narrowed(
    model: onnx.ModelProto, dst: Path, structure: str, share: float, layers: list[dict], before: int
) -> dict:
    """Write a model whose layers lost units, and the step's details."""
    # Shapes recorded for the old widths would contradict the new ones.
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return {
        "structure": structure,
        "share_removed": share,
        "layers": layers,
        "parameters_before": before,
        "parameters_after": parameters(model),
    }


def parameters(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)
