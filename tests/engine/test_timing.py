"""Latency with its interval, and paired comparisons that noise alone cannot tip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import tiny_onnx_model
from webapp.engine import loading
from webapp.engine.timing import compare, latency, median_interval


def test_the_median_interval_is_made_of_order_statistics():
    values = list(range(1, 16))  # 15 values: binomial(15, 1/2) puts the bounds at the 4th and 12th
    assert median_interval(values) == (4, 12)
    assert median_interval(list(reversed(values))) == (4, 12)
    assert median_interval([5.0] * 40) == (5.0, 5.0)
    # Five values cannot hold a 95 % interval inside their range: the whole range it is.
    assert median_interval([3, 1, 2, 5, 4]) == (1, 5)


@pytest.mark.parametrize("n", [6, 15, 51, 201])
def test_the_interval_narrows_as_values_grow_but_keeps_the_median(n):
    rng = np.random.default_rng(n)
    values = list(rng.normal(10, 1, n))
    low, high = median_interval(values)
    assert low <= float(np.median(values)) <= high


def _chain(path, layers: int, width: int = 256):
    """`layers` MatMuls of width x width in a row: heavy when `layers` is large."""
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for i in range(layers):
        weight = rng.normal(0, 0.05, (width, width)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return loading.run_onnx(path, 1)


@pytest.mark.slow  # times models for the default two seconds
def test_a_model_doing_many_times_the_work_is_found_slower(tmp_path):
    light, heavy = _chain(tmp_path / "light.onnx", 1), _chain(tmp_path / "heavy.onnx", 12)
    feeds = {"x": np.ones((32, 256), dtype=np.float32)}
    result = compare(light, feeds, heavy, feeds, lambda: None)
    assert result.low <= result.speedup <= result.high < 0.5
    assert result.slower_than(5.0)
    assert result.reference.median_ms < result.candidate.median_ms
    assert result.rounds >= 15


@pytest.mark.slow  # times models for the default two seconds
def test_a_model_against_itself_is_never_called_slower(tmp_path):
    model = loading.run_onnx(tiny_onnx_model(tmp_path / "m.onnx"), 1)
    feeds = {"x": np.ones((32, 4), dtype=np.float32)}
    result = compare(model, feeds, model, feeds, lambda: None)
    assert not result.slower_than(5.0)
    assert 0.9 < result.speedup < 1.1


@pytest.mark.slow  # times models for the default two seconds
def test_one_models_latency_comes_with_its_interval(tmp_path):
    model = loading.run_onnx(tiny_onnx_model(tmp_path / "m.onnx"), 1)
    timed = latency(model, {"x": np.ones((8, 4), dtype=np.float32)}, lambda: None)
    assert 0 < timed.low_ms <= timed.median_ms <= timed.high_ms
    assert timed.runs >= 15
