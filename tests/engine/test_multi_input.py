"""Models with several inputs: one evaluation array per input name, a sample axis per
input (a recurrent state counts samples on axis 1, a scalar not at all)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import multi_input_npz, multi_input_onnx_model
from webapp.engine import analysis
from webapp.engine.datasets import load_npz
from webapp.engine.errors import DatasetRejected
from webapp.engine.evaluation import batches
from webapp.engine.loading import InputSpec
from webapp.engine.runner import SessionJob, run_session

SPECS = [
    InputSpec("a", [None, 8]),
    InputSpec("b", [None, 8]),
    InputSpec("state", [2, None, 3]),
    InputSpec("scale", []),
]


def test_each_input_is_batched_along_its_own_sample_axis(tmp_path):
    data = load_npz(multi_input_npz(tmp_path / "d.npz"), SPECS)
    assert data.count == 20
    shapes = [{k: v.shape for k, v in feeds.items()} for feeds, _ in batches(data, 8)]
    assert shapes[0] == {"a": (8, 8), "b": (8, 8), "state": (2, 8, 3), "scale": ()}
    # The last batch (4 samples) is padded to a full one on each input's own axis.
    assert shapes[-1]["state"] == (2, 8, 3) and [used for _, used in batches(data, 8)] == [8, 8, 4]


@pytest.mark.parametrize(
    "override, words",
    [
        ({"b": None}, "missing: 'b'"),
        ({"c": np.zeros((20, 8), np.float32)}, "'c', which is not an input"),
        ({"sample_axes": np.array([0, 0, 3, -1])}, "axis 3"),
        ({"sample_axes": np.array([0, 0])}, "4 whole numbers"),
        ({"state": np.zeros((2, 19, 3), np.float32)}, "different numbers of samples"),
        ({"a": np.zeros((20, 7), np.float32)}, "dimension 1 is 7, not 8"),
    ],
)
def test_evaluation_data_that_does_not_fit_the_inputs_says_how(tmp_path, override, words):
    with pytest.raises(DatasetRejected) as caught:
        load_npz(multi_input_npz(tmp_path / "d.npz", **override), SPECS)
    assert words in caught.value.message


def test_a_multi_input_model_is_analysed_and_optimized_on_itsmulti_input_npz(tmp_path):
    model, data = multi_input_onnx_model(tmp_path / "m.onnx"), multi_input_npz(tmp_path / "d.npz")
    found = analysis.analyse(model, 1, eval_path=data, latency_seconds=0.05)
    assert [spec["name"] for spec in found["inputs"]] == ["a", "b", "state", "scale"]
    assert found["eval_data"] == {"samples": 20, "labels": False}
    job = SessionJob(
        1,
        str(model),
        "onnx",
        found["inputs"],
        [{"technique": "quantization", "params": {"mode": "int8_static"}}],
        {"threads": 1, "latency_batch_size": 8, "min_accuracy_retention_percent": 90.0},
        str(tmp_path / "work"),
        eval_data_path=str(data),
        latency_seconds=0.05,
    )
    outcome = run_session(job, lambda *a: None, lambda *a: None, lambda: False)
    assert outcome.results["evaluation_inputs"] == "dataset"
    assert [s["outcome"] for s in outcome.steps] in (["kept"], ["rolled_back"])
    assert len(outcome.steps[0]["measurement"]["outputs"]) == 2  # both outputs were compared
