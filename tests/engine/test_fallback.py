"""The accuracy-aware fallback's search for the nodes to leave in float, on a metric given
as a function of those nodes (the runner's measures a real model: tests/engine/test_search.py)."""

from __future__ import annotations

from webapp.engine import fallback

NODES = [f"conv{i}" for i in range(40)]


def _metric(needed: set[str], calls: list):
    """99.5 % with every node of `needed` in float, 1 % lost for each one quantized."""

    def retention(excluded: list[str]) -> float:
        calls.append(list(excluded))
        return 99.5 - len(needed - set(excluded))

    return retention


def test_one_run_that_holds_is_halved_to_the_nodes_that_matter():
    calls = []
    found = fallback.float_nodes(NODES, _metric({"conv2"}, calls), 99.0)
    assert found == ["conv2"]
    # The first run of 5 holds at once; halving it takes 3 more measurements, not 40.
    assert len(calls) <= 5


def test_runs_are_added_by_what_they_recover_until_the_floor_holds():
    calls = []
    needed = {"conv1", "conv22", "conv23", "conv38"}
    found = fallback.float_nodes(NODES, _metric(needed, calls), 99.0)
    assert set(found) >= needed and len(found) <= 8
    assert len(calls) < len(NODES)


def test_nothing_that_holds_gives_none():
    assert fallback.float_nodes(NODES, lambda excluded: 90.0, 99.0) is None
    assert fallback.float_nodes([], lambda excluded: 100.0, 99.0) is None


def test_when_time_runs_out_the_smallest_set_that_held_is_kept():
    calls = []
    metric = _metric({"conv7"}, calls)

    def timed(excluded):
        return None if len(calls) >= 2 else metric(excluded)

    # The second run (conv5..conv9) holds, then time is up before any halving.
    assert fallback.float_nodes(NODES, timed, 99.0) == NODES[5:10]
    calls.clear()
    assert fallback.float_nodes(NODES, lambda excluded: None, 99.0) is None


def test_the_nodes_offered_are_every_node_int8_static_quantizes(tmp_path):
    """With every node quantized_nodes names left in float, nothing is quantized: the Add,
    Mul and Sigmoid ORT's QDQ registry omits (quantize_static takes both registries) are
    named too, so the fallback can reach every source of error."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from webapp.engine.datasets import EvalData
    from webapp.engine.techniques.quantization import quantize, quantized_nodes

    rng = np.random.default_rng(0)
    w1, w2 = (rng.normal(size=shape).astype(np.float32) for shape in ((8, 8), (8, 4)))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Sigmoid", ["h"], ["gate"], name="gate"),
            helper.make_node("Mul", ["h", "gate"], ["silu"], name="silu"),
            helper.make_node("Add", ["silu", "x"], ["res"], name="residual"),
            helper.make_node("MatMul", ["res", "w2"], ["y"], name="fc2"),
        ],
        "gated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    src = tmp_path / "gated.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    data = EvalData({"x": rng.normal(size=(32, 8)).astype(np.float32)}, None, "dataset")
    params = {"mode": "int8_static", "op_types": "all"}
    nodes = quantized_nodes(src, tmp_path, params)
    assert set(nodes) == {"fc1", "gate", "silu", "residual", "fc2"}
    dst = tmp_path / "q.onnx"
    quantize(src, dst, {**params, "exclude_nodes": nodes}, data, 8, lambda: None)
    assert not [n for n in onnx.load(str(dst)).graph.node if n.op_type == "QuantizeLinear"]
    quantize(src, dst, {**params, "exclude_nodes": ["silu"]}, data, 8, lambda: None)
    assert [n for n in onnx.load(str(dst)).graph.node if n.op_type == "QuantizeLinear"]
