"""Neuron pruning removes hidden units between dense layers: the matrices, the file and
the compute shrink, and units that carry nothing go first."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from webapp.engine.errors import TechniqueFailed
from webapp.engine.techniques import TECHNIQUES
from webapp.engine.techniques.pruning import prune


def _mlp(path, bias_shape=(24,)):
    """Gemm (weights stored [out, in]) → Relu → MatMul + bias Add → Relu → Gemm, with 8
    hidden units of the first pair and 6 of the second that carry nothing (all-zero
    incoming weights and bias)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(32, 16)).astype(np.float32)  # [out, in], transB=1
    w1[:8] = 0.0
    b1 = np.zeros(32, dtype=np.float32)
    w2 = rng.normal(size=(32, 24)).astype(np.float32)  # [in, out]
    b2 = rng.normal(size=24).astype(np.float32)
    w2[:, :6], b2[:6] = 0.0, 0.0
    b2 = b2.reshape(bias_shape)
    w3 = rng.normal(size=(24, 5)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
            helper.make_node("Relu", ["h1"], ["r1"]),
            helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
            helper.make_node("Add", ["m2", "b2"], ["h2"]),
            helper.make_node("Relu", ["h2"], ["r2"]),
            helper.make_node("Gemm", ["r2", "w3"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [
            numpy_helper.from_array(a, n)
            for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3")]
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("bias_shape", [(24,), (1, 24)])  # skl2onnx writes [1, out]
def test_removing_units_that_carry_nothing_changes_nothing_and_shrinks_the_model(tmp_path, bias_shape):
    src = _mlp(tmp_path / "mlp.onnx", bias_shape)
    out = tmp_path / "pruned.onnx"
    details = prune(src, out, 0.25, "neurons")
    assert details["layers"][0]["neurons"] == [32, 24]  # the 8 dead units of the first pair
    assert details["layers"][1]["neurons"] == [24, 18]  # the 6 of the second
    assert details["parameters_after"] < details["parameters_before"]
    weights = {t.name: list(t.dims) for t in onnx.load(str(out)).graph.initializer}
    assert weights["w1"] == [24, 16] and weights["b1"] == [24] and weights["w2"] == [24, 18]
    assert weights["b2"] == [*bias_shape[:-1], 18] and weights["w3"] == [18, 5]
    assert out.stat().st_size < src.stat().st_size
    x = np.random.default_rng(2).normal(size=(6, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=1e-5, atol=1e-5)


def test_a_model_without_dense_pairs_is_skipped_with_a_reason(tmp_path):
    from tests.helpers import tiny_onnx_model

    with pytest.raises(TechniqueFailed) as caught:
        prune(tiny_onnx_model(tmp_path / "t.onnx"), tmp_path / "o.onnx", 0.5, "neurons")
    assert "hidden units" in caught.value.message


def test_the_registry_offers_neurons_and_keeps_the_plain_recipe_by_default():
    params = TECHNIQUES["pruning"].params()
    assert params.load({"sparsity": 0.5}) == {"sparsity": 0.5}
    assert params.load({"sparsity": 0.5, "structure": "neurons"})["structure"] == "neurons"
    assert TECHNIQUES["pruning"].best_size_reduction({"sparsity": 0.5, "structure": "neurons"}) > 0
