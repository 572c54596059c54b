"""Every file a step makes is one the trusted side will take: ONNX's checker must accept
it, or the step fails on its own and the session goes on (it used to end the session when
the worker handed the file over). ORT's quantizer leaves some graphs out of order, which
ONNX Runtime forgives and ONNX's checker does not: they are put in order."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from webapp.engine.errors import ModelRejected
from webapp.engine.screening import check_output
from webapp.engine.techniques.onnx_graph import sort_topologically


def _branching(path, out_of_order: bool):
    """y = If(flag, then: relu(x) + 1, else: relu(x)); the branches read `r` from outside.
    With out_of_order, the Relu that makes `r` comes after the If, as ORT's quantizer
    leaves such graphs."""
    one = numpy_helper.from_array(np.ones(4, dtype=np.float32), "one")
    then = helper.make_graph(
        [helper.make_node("Add", ["r", "one"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [None, 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [None, 4])],
    )
    relu = helper.make_node("Relu", ["x"], ["r"])
    branch = helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)
    graph = helper.make_graph(
        [branch, relu] if out_of_order else [relu, branch],
        "branching",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_a_file_the_checker_refuses_is_refused_with_the_checker_s_reason(tmp_path):
    with pytest.raises(ModelRejected, match="topologically sorted"):
        check_output(_branching(tmp_path / "m.onnx", out_of_order=True))
    check_output(_branching(tmp_path / "ok.onnx", out_of_order=False))


def test_a_graph_whose_branch_reads_a_later_node_is_put_in_order(tmp_path):
    path = _branching(tmp_path / "m.onnx", out_of_order=True)
    model = onnx.load(str(path))
    assert sort_topologically(model)
    assert [node.op_type for node in model.graph.node] == ["Relu", "If"]
    onnx.checker.check_model(model)
    x = np.array([[-1, 2, -3, 4]], dtype=np.float32)
    run = ort.InferenceSession(model.SerializeToString()).run
    assert run(None, {"x": x, "flag": np.array(True)})[0].tolist() == [[1, 3, 1, 5]]
    # In order already: nothing moves.
    assert not sort_topologically(onnx.load(str(_branching(tmp_path / "ok.onnx", out_of_order=False))))


def test_fp16_of_a_graph_that_casts_a_shape_to_float_loads_and_agrees(tmp_path):
    """YOLOv8's head divides by its own width, cast to float: onnxconverter-common's fp16
    made that Cast's output float16 while it still cast to float32, and ONNX Runtime
    refused the file (the search's fp16 candidate on nudenet's detector failed so)."""
    from webapp.engine.techniques.quantization import quantize

    w = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Shape", ["h"], ["s"]),
            helper.make_node("Gather", ["s", "one"], ["width"], axis=0),
            helper.make_node("Cast", ["width"], ["width_f"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["h", "width_f"], ["y"]),
        ],
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1, np.int64), "one")],
    )
    src, dst = tmp_path / "cast.onnx", tmp_path / "fp16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    quantize(src, dst, {"mode": "fp16"}, None, 4, lambda: None)
    check_output(dst)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(dst)).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)
    assert any(t.data_type == TensorProto.FLOAT16 for t in onnx.load(str(dst)).graph.initializer)
