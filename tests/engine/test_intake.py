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


def _pooling_model(path):
    """images [N, 3, H, W] -> global average pool: the file leaves H and W open, as
    detectors exported for any image size do."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["y"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 1, 1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("member", ["images", "x"])
def test_dimensions_a_file_leaves_open_are_read_from_its_evaluation_data(tmp_path, member):
    model = _pooling_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", **{member: np.zeros((5, 3, 32, 48), np.float32)})
    analysis = analyse(model, 1, eval_path=tmp_path / "d.npz", latency_seconds=0.05)
    assert analysis["inputs"] == [{"name": "images", "shape": [None, 3, 32, 48], "dtype": "float32"}]
    assert analysis["eval_data"] == {"samples": 5, "labels": False}


def test_without_data_or_input_shape_open_dimensions_are_still_asked_for(tmp_path):
    from webapp.engine.errors import ModelRejected

    with pytest.raises(ModelRejected, match="send input_shape"):
        analyse(_pooling_model(tmp_path / "m.onnx"), 1, latency_seconds=0.05)


def _ids(last):
    """256 samples of 8192 ids, over two of the slices the check takes; the last is `last`."""
    ids = np.arange(1 << 21, dtype=np.float64)
    ids[-1] = last
    return ids.reshape(256, 8192)


@pytest.mark.parametrize(
    ("stored", "refused"),
    [
        (_ids(7.0), False),
        (_ids(0.5), True),  # in the second slice
        (np.array([[3], [2**63 + 5]], dtype=np.uint64), True),
        (np.array([[-(2**63)], [2**63 - 1]], dtype=np.int64), False),
    ],
)
def test_integer_inputs_take_only_values_they_hold_exactly(tmp_path, stored, refused):
    from webapp.engine.datasets import load_npz
    from webapp.engine.errors import DatasetRejected
    from webapp.engine.loading import InputSpec

    np.savez(tmp_path / "d.npz", ids=stored)
    spec = [InputSpec("ids", [None, stored.shape[1]], "int64")]
    if refused:
        with pytest.raises(DatasetRejected, match="input 'ids' \\(int64\\) cannot take exactly"):
            load_npz(tmp_path / "d.npz", spec)
    else:
        loaded = load_npz(tmp_path / "d.npz", spec).inputs["ids"]
        assert loaded.dtype == np.int64 and np.array_equal(loaded, stored.astype(np.int64))
