"""Global magnitude pruning of weight matrices and kernels.

Zeros stored densely do not make a file smaller or a CPU kernel faster; the
step reports the sparsity reached and the compressed size (what a zip or a
sparse-aware runtime gains), next to the unchanged size on disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import TechniqueFailed
from .onnx_graph import load_with_weights, replace_initializer, weight_uses


def prune(src: Path, dst: Path, sparsity: float) -> dict:
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
