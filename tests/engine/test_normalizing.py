"""What the techniques do to models before they work on them: weights kept as Constant
nodes are weights too, and int8 static brings an old opset up to what it needs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from webapp.engine.techniques import TECHNIQUES
from webapp.engine.techniques.lowrank import compress
from webapp.engine.techniques.pruning import prune
from webapp.engine.techniques.quantization import opset_for_static


def _constant_weight_model(path, size=64, opset=17):
    """y = x @ W with W a Constant node, as Paddle's exporter writes weights."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(size, size)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w")),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "paddle-like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path, weight


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_pruning_and_low_rank_see_weights_stored_as_constant_nodes(tmp_path):
    src, weight = _constant_weight_model(tmp_path / "m.onnx")
    pruned = tmp_path / "pruned.onnx"
    assert prune(src, pruned, 0.5)["pruned_tensors"] == 1
    stored = numpy_helper.to_array(onnx.load(str(pruned)).graph.initializer[0])
    assert 0.45 <= float((stored == 0).mean()) <= 0.55
    factored = tmp_path / "factored.onnx"
    assert len(compress(src, factored, rank=8)["factorized_layers"]) == 1
    x = np.ones((2, 64), dtype=np.float32)
    assert _run(factored, x).shape == (2, 64)


def test_int8_static_upgrades_an_old_opset_it_cannot_quantize_per_channel(tmp_path):
    src, _ = _constant_weight_model(tmp_path / "old.onnx", opset=11)
    upgraded = opset_for_static(src, tmp_path)
    assert upgraded != src
    assert onnx.load(str(upgraded)).opset_import[0].version == 13
    from webapp.engine.datasets import EvalData

    x = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)
    data = EvalData({"x": x}, None, "dataset")
    technique = TECHNIQUES["quantization"]
    out = tmp_path / "int8.onnx"
    technique.apply(src, out, technique.params().load({"mode": "int8_static"}), data, 16, lambda: None)
    reference = x[:4] @ _constant_weight_model(tmp_path / "again.onnx")[1]
    assert np.abs(_run(out, x[:4]) - reference).max() < 0.1 * np.abs(reference).max()
