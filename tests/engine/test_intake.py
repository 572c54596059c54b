"""What an upload may declare about its inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from webapp.engine.analysis import analyse


@pytest.mark.parametrize("batch", [-1, "N"])
def test_a_batch_dimension_stored_as_minus_one_or_a_name_is_left_open(tmp_path, batch):
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [weight],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    analysis = analyse(path, 1)
    assert analysis["inputs"] == [{"name": "x", "shape": [None, 4], "dtype": "float32"}]
    assert analysis["baseline_latency_ms"] > 0
