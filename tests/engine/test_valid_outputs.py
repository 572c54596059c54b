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
