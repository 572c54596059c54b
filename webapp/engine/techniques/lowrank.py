"""Low-rank compression: factor large fully-connected weights W ≈ A·B by SVD.

A [in, out] matrix becomes [in, r] and [r, out]; kept only where
r·(in + out) < in·out, so parameters and multiply-adds really drop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import TechniqueFailed
from .onnx_graph import add_initializer, load_with_weights, replace_initializer, unique_name, weight_uses

MIN_DIMENSION = 32  # smaller layers cost more in extra nodes than they save


def _rank(singular: np.ndarray, energy: float | None, rank: int | None) -> int:
    if rank is not None:
        return min(rank, len(singular))
    share = np.cumsum(singular**2) / np.sum(singular**2)
    if energy is None:  # as np.searchsorted(share, None) would; the schema gives one or the other
        raise TypeError("neither energy nor rank given")
    return int(np.searchsorted(share, energy) + 1)


def compress(src: Path, dst: Path, energy: float | None = None, rank: int | None = None) -> dict:
    model = load_with_weights(src)
    layers = []
    params_before = params_after = 0
    for use in weight_uses(model, ops={"MatMul", "Gemm"}):
        node, tensor = use.node, use.initializer
        if len(tensor.dims) != 2 or any(a.name == "transA" and a.i for a in node.attribute):
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        weight = numpy_helper.to_array(tensor).astype(np.float64)
        matrix = weight.T if trans_b else weight  # [in, out]
        n_in, n_out = matrix.shape
        if min(n_in, n_out) < MIN_DIMENSION:
            continue
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        r = _rank(s, energy, rank)
        if r * (n_in + n_out) >= n_in * n_out:
            continue
        first = u[:, :r] * s[:r]  # [in, r]
        second = vt[:r, :]  # [r, out]
        first_name = add_initializer(model, first, unique_name(model, tensor.name + "_lowrank_a"))
        hidden = unique_name(model, node.output[0] + "_lowrank")
        data_input = node.input[0]
        position = list(model.graph.node).index(node)
        model.graph.node.insert(
            position,
            helper.make_node(
                "MatMul", [data_input, first_name], [hidden], name=unique_name(model, node.name + "_a")
            ),
        )
        node.input[0] = hidden
        node.input[1] = replace_initializer(
            model, tensor, second.T if trans_b else second, unique_name(model, tensor.name + "_lowrank_b")
        )
        params_before += n_in * n_out
        params_after += r * (n_in + n_out)
        layers.append({"layer": node.name or tensor.name, "shape": [n_in, n_out], "rank": r})
    if not layers:
        raise TechniqueFailed(
            "No fully-connected layer gains from a low-rank factorization at these settings "
            f"(layers need both sides of at least {MIN_DIMENSION} and a rank that saves parameters)."
        )
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return {
        "energy": energy,
        "rank": rank,
        "factorized_layers": layers,
        "parameters_before": params_before,
        "parameters_after": params_after,
    }
