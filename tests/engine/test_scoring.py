"""Every output is judged, in the way that fits it, and the worst one is the model's score;
labels are checked against the class-score output wherever it sits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from webapp.engine.analysis import analyse
from webapp.engine.datasets import EvalData
from webapp.engine.evaluation import (
    ACCURACY,
    EXACT_AGREEMENT,
    TOP1_AGREEMENT,
    VALUE_AGREEMENT,
    score,
)

RNG = np.random.default_rng(7)
UNLABELLED = EvalData({"x": np.zeros((200, 4), dtype=np.float32)}, None, "file")


def test_class_scores_hidden_behind_a_large_first_output_still_count():
    """A detector-like model: a big box tensor first, small class scores second. Scrambling
    the classes must show, however little energy they carry."""
    boxes = RNG.normal(0, 100, (200, 100, 4)).astype(np.float32)
    classes = RNG.normal(0, 1e-3, (200, 10)).astype(np.float32)
    scrambled = classes[:, ::-1].copy()
    value, kind, compared = score([boxes, scrambled], UNLABELLED, [boxes, classes])
    assert kind == TOP1_AGREEMENT
    assert value < 0.5
    assert [c["kind"] for c in compared] == [VALUE_AGREEMENT, TOP1_AGREEMENT]
    assert compared[0]["value"] == 1.0  # the boxes did not move


def test_a_regression_output_is_judged_by_its_relative_error():
    """(A [samples, n] tensor of floats reads as class scores: regression outputs are any
    other shape, such as an image's or a sequence's.)"""
    original = RNG.normal(0, 1, (200, 4, 4))
    off_by_ten_percent = original * 1.1
    value, kind, _ = score([off_by_ten_percent], UNLABELLED, [original])
    assert kind == VALUE_AGREEMENT
    assert value == pytest.approx(0.9, abs=1e-6)


def test_whole_number_outputs_must_match_exactly():
    labels = RNG.integers(0, 10, 200)
    changed = labels.copy()
    changed[:20] = (changed[:20] + 1) % 10
    value, kind, _ = score([changed], UNLABELLED, [labels])
    assert (value, kind) == (0.9, EXACT_AGREEMENT)


def test_with_labels_the_class_scores_are_used_even_after_a_label_output():
    probabilities = RNG.random((200, 10)).astype(np.float32)
    truth = probabilities.argmax(axis=1)
    predicted_labels = np.zeros(200, dtype=np.int64)  # a label output first, skl2onnx-style
    labelled = EvalData({"x": np.zeros((200, 4), dtype=np.float32)}, truth, "file")
    outputs = [predicted_labels, probabilities]
    value, kind, compared = score(outputs, labelled, outputs)
    assert (value, kind) == (1.0, ACCURACY)
    assert compared == [{"output": 1, "kind": ACCURACY, "value": 1.0}]


def test_an_output_that_is_not_a_tensor_is_left_out():
    probabilities = RNG.random((200, 3)).astype(np.float32)
    value, kind, compared = score([np.empty(0), probabilities], UNLABELLED, [np.empty(0), probabilities])
    assert (value, kind) == (1.0, TOP1_AGREEMENT)
    assert [c["output"] for c in compared] == [1]


def _label_first_classifier(path):
    """A linear classifier whose first output is the label (ArgMax), the second the scores."""
    weight = numpy_helper.from_array(RNG.normal(0, 1, (4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "label-first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
        ],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_classifier_with_its_label_output_first_accepts_labels(tmp_path):
    model = _label_first_classifier(tmp_path / "m.onnx")
    data = tmp_path / "eval.npz"
    np.savez(data, x=RNG.normal(0, 1, (50, 4)).astype(np.float32), y=RNG.integers(0, 3, 50))
    analysis = analyse(model, 1, None, data)
    assert analysis["eval_data"] == {"samples": 50, "labels": True}
