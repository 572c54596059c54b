"""The task metrics: detection F1 of a detector's boxes against the original's, CTC sequence
exact match, and the classification and agreement choices, on real arrays and one real
time-major ONNX model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from webapp.engine import loading
from webapp.engine.datasets import BOX_CLASSES, BOXES, EvalData
from webapp.engine.evaluation import ACCURACY, TOP1_AGREEMENT, VALUE_AGREEMENT, measure, score
from webapp.engine.metrics import (
    DETECTION_F1,
    LABELLED_DETECTION_F1,
    SEQUENCE_ACCURACY,
    SEQUENCE_EXACT_MATCH,
    TASKS,
    TaskMismatch,
    ctc_decode,
)

RNG = np.random.default_rng(14)
IMAGES, CLASSES, ANCHORS = 6, 3, 200
UNLABELLED = EvalData({"x": np.zeros((IMAGES, 4), dtype=np.float32)}, None, "file")


def yolo_output(objects_per_image: int = 4) -> np.ndarray:
    """A YOLOv8-style head [images, 4 + classes, anchors]: box centres and sizes in pixels,
    a few anchors confident of one class each, the rest faint."""
    out = np.zeros((IMAGES, 4 + CLASSES, ANCHORS), dtype=np.float32)
    out[:, 4:] = RNG.uniform(0, 0.05, (IMAGES, CLASSES, ANCHORS))
    for image in range(IMAGES):
        for k, anchor in enumerate(RNG.choice(ANCHORS, objects_per_image, replace=False)):
            # Objects on a grid, 150 px apart and 60 px wide: none overlaps another.
            out[image, :4, anchor] = [100 + 150 * k, 100 + 150 * (k % 2), 60, 60]
            out[image, 4 + RNG.integers(CLASSES), anchor] = RNG.uniform(0.5, 0.95)
    return out


def detect(outputs, reference, data=UNLABELLED):
    return score(outputs, data, reference, task="detection")


def test_boxes_that_shift_a_little_still_agree():
    original = yolo_output()
    moved = original.copy()
    moved[:, :2] += 2.0  # two pixels on 60 px boxes: IoU ~0.94
    moved[:, 4:] *= 0.97  # confidences a little lower, still above the threshold
    value, kind, compared = detect([moved], [original])
    assert (value, kind) == (1.0, DETECTION_F1)
    assert compared == [
        {"output": 0, "kind": DETECTION_F1, "value": 1.0, "reference_detections": 24, "confidence": 0.25}
    ]


def test_scrambled_class_scores_show_though_the_boxes_outweigh_them():
    """The issue's detector: boxes in pixels carry nearly all of the tensor's energy, so the
    worst-output agreement barely moves while every detection changes class."""
    original = yolo_output()
    scrambled = original.copy()
    scrambled[:, 4:] = original[:, [5, 6, 4]]
    value, kind, _ = detect([scrambled], [original])
    assert kind == DETECTION_F1
    assert value < 0.5
    agreement, agreement_kind, _ = score([scrambled], UNLABELLED, [original])
    assert agreement_kind == VALUE_AGREEMENT
    assert agreement > 0.99


def test_channels_last_yolo_heads_decode_the_same():
    original = yolo_output().transpose(0, 2, 1).copy()  # [images, anchors, 4 + classes]
    lost = original.copy()
    lost[0, :, 4:] = 0.0  # the first image's objects vanish
    assert detect([original], [original])[0] == 1.0
    # That image scores 0, the five others 1.
    assert detect([lost], [original])[0] == pytest.approx(5 / 6, abs=1e-6)


def test_one_missed_and_one_extra_box_cost_their_share_of_f1():
    original = yolo_output(objects_per_image=4)
    changed = original.copy()
    confident = np.flatnonzero(original[0, 4:].max(axis=0) > 0.25)
    spare = np.setdiff1d(np.arange(ANCHORS), confident)[0]
    changed[0, 4:, confident[0]] = 0.0  # missed
    changed[0, :4, spare] = [900, 900, 50, 50]  # found where the original saw nothing
    changed[0, 4, spare] = 0.8
    # Image 0: 3 matched of 4 found and 4 expected, F1 6/8; the five others 1.
    assert detect([changed], [original])[0] == pytest.approx((0.75 + 5) / 6, abs=1e-6)


def boxes_scores_classes(count: int = 5, slots: int = 10):
    """A post-NMS head: boxes [images, slots, 4] as corners, scores, classes (floats, as
    TensorFlow's detection API writes them) and the number of valid rows."""
    boxes = np.zeros((IMAGES, slots, 4), dtype=np.float32)
    for slot in range(slots):
        boxes[:, slot] = [0.1 * slot, 0.1 * slot, 0.1 * slot + 0.08, 0.1 * slot + 0.08]
    scores = np.zeros((IMAGES, slots), dtype=np.float32)
    scores[:, :count] = RNG.uniform(0.3, 0.99, (IMAGES, count))
    classes = RNG.integers(1, 5, (IMAGES, slots)).astype(np.float32)
    counts = np.full((IMAGES,), count, dtype=np.float32)
    return [boxes, classes, scores, counts]


def test_boxes_scores_and_classes_outputs_are_found_and_compared():
    original = boxes_scores_classes()
    assert detect(original, original)[0] == 1.0
    relabelled = [output.copy() for output in original]
    relabelled[1][:, 0] += 1  # the first box of every image changes class
    # 4 of 5 agree on every image: F1 8/10.
    assert detect(relabelled, original)[0] == pytest.approx(0.8, abs=1e-6)
    # Rows past the count are not detections, whatever they hold.
    padded = [output.copy() for output in original]
    padded[2][:, 5:] = 0.9
    assert detect(padded, original)[0] == 1.0


def test_images_where_neither_model_sees_anything_agree():
    original = yolo_output()
    original[1:3, 4:] = np.minimum(original[1:3, 4:], 0.01)  # two images without objects
    value, _, compared = detect([original.copy()], [original])
    assert value == 1.0
    assert compared[0]["reference_detections"] == 16
    # A candidate that loses every detection agrees only on the images that had none.
    lost = original.copy()
    lost[:, 4:] = 0.0
    assert detect([lost], [original])[0] == pytest.approx(2 / 6, abs=1e-6)


def test_an_original_that_finds_little_at_the_usual_confidence_is_judged_on_its_top_boxes():
    """Photos without the detector's classes: nothing reaches 0.25, so a candidate that
    lost every box would agree everywhere. The original's most confident boxes, one per
    image, set the confidence instead, and losing them shows."""
    faint = yolo_output()
    faint[:, 4:] *= 0.2  # objects at 0.1-0.19, the rest below 0.01
    value, _, compared = detect([faint.copy()], [faint])
    assert value == 1.0
    assert compared[0]["reference_detections"] == IMAGES
    assert 0.09 < compared[0]["confidence"] < 0.25
    lost = faint.copy()
    lost[:, 4:] = 0.0
    # Six boxes need not fall on six images: the ones left empty still agree.
    empty = sum(1 for image in faint if image[4:].max() < compared[0]["confidence"])
    assert detect([lost], [faint])[0] == pytest.approx(empty / IMAGES, abs=1e-6)
    assert empty < IMAGES / 2


def test_an_original_that_detects_nothing_at_all_cannot_judge():
    nothing = yolo_output()
    nothing[:, 4:] = 0.001
    with pytest.raises(TaskMismatch, match="detects nothing") as raised:
        detect([nothing], [nothing])
    assert raised.value.kind == "task_mismatch"


def test_detection_on_a_model_without_a_detection_head_fails_plainly():
    probabilities = RNG.random((IMAGES, 10)).astype(np.float32)
    with pytest.raises(TaskMismatch, match="Upload it with another task metric") as raised:
        detect([probabilities], [probabilities])
    assert raised.value.kind == "task_mismatch"
    assert "[10]" in raised.value.message


def sequences_output(tokens: list[list[int]], steps: int = 12, classes: int = 6) -> np.ndarray:
    """CTC scores [samples, time, classes] whose best path spells `tokens`, a blank between
    repeated symbols and blanks to the end."""
    out = RNG.uniform(0, 0.1, (len(tokens), steps, classes)).astype(np.float32)
    for sample, sequence in enumerate(tokens):
        path: list[int] = []
        for token in sequence:
            if path and path[-1] == token:
                path.append(0)
            path += [token, token]
        path += [0] * (steps - len(path))
        out[sample, np.arange(steps), path] = 1.0
    return out


def test_greedy_ctc_collapses_repeats_and_drops_blanks():
    scores = np.eye(4, dtype=np.float32)[[[0, 1, 1, 0, 1, 2, 2, 0, 3]]]
    assert ctc_decode(scores) == [(1, 1, 2, 3)]


def test_equal_sequences_match_even_when_the_scores_move():
    tokens = [[1, 2, 3], [4, 4], [5], []]
    original = sequences_output(tokens)
    noisy = original + RNG.uniform(0, 0.05, original.shape).astype(np.float32)
    value, kind, compared = score([noisy], UNLABELLED, [original], task="ctc")
    assert (value, kind) == (1.0, SEQUENCE_EXACT_MATCH)
    assert compared == [{"output": 0, "kind": SEQUENCE_EXACT_MATCH, "value": 1.0}]


def test_one_differing_sequence_in_four_is_three_quarters():
    original = sequences_output([[1, 2, 3], [4, 4], [5], [2]])
    changed = sequences_output([[1, 2, 3], [4], [5], [2]])  # the repeat merged
    assert score([changed], UNLABELLED, [original], task="ctc")[0] == 0.75


def test_ctc_on_a_model_without_a_sequence_output_fails_plainly():
    probabilities = RNG.random((4, 10)).astype(np.float32)
    with pytest.raises(TaskMismatch, match="CTC metric"):
        score([probabilities], UNLABELLED, [probabilities], task="ctc")


def _time_major_recognizer(path):
    """x [batch, time, classes] -> Softmax -> Transpose: y [time, batch, classes], the layout
    of many CTC recognizers."""
    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=2),
            helper.make_node("Transpose", ["p"], ["y"], perm=[1, 0, 2]),
        ],
        "time-major",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 12, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [12, "batch", 6])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_time_major_recognizer_is_measured_by_its_sequences(tmp_path):
    """Its samples sit on the second axis: they are told apart by the batch's size, and a
    last, padded batch of 3 (of 8) is cut on the right axis."""
    model = loading.run_onnx(_time_major_recognizer(tmp_path / "r.onnx"), 1)
    tokens = [[1, 2], [3], [4, 4, 5], [], [5, 1], [2, 2], [3, 4], [1], [2, 3, 4], [5], [1, 1]]
    data = EvalData({"x": sequences_output(tokens) * 5}, None, "file")
    measurement, outputs = measure(
        tmp_path / "r.onnx", model, data, 8, None, lambda: None, budget_s=0.05, task="ctc"
    )
    assert outputs[0].shape == (11, 12, 6)
    assert ctc_decode(outputs[0]) == [tuple(t) for t in tokens]
    assert (measurement.score, measurement.score_kind) == (1.0, SEQUENCE_EXACT_MATCH)


def test_classification_judges_the_class_scores_alone():
    """Without labels: top-1 agreement of the class-score output, where `auto` would let a
    second, regression output decide; with labels: accuracy, as `auto`."""
    probabilities = RNG.random((IMAGES, 5)).astype(np.float32)
    embedding = RNG.normal(0, 1, (IMAGES, 3, 8))
    outputs, reference = [probabilities, embedding * 1.5], [probabilities, embedding]
    value, kind, compared = score(outputs, UNLABELLED, reference, task="classification")
    assert (value, kind) == (1.0, TOP1_AGREEMENT)
    assert [c["output"] for c in compared] == [0]
    assert score(outputs, UNLABELLED, reference)[1] == VALUE_AGREEMENT
    labelled = EvalData(UNLABELLED.inputs, probabilities.argmax(axis=1), "file")
    assert score(outputs, labelled, reference, task="classification")[:2] == (1.0, ACCURACY)
    with pytest.raises(TaskMismatch, match="class scores"):
        score([embedding], UNLABELLED, [embedding], task="classification")


def test_agreement_ignores_labels():
    probabilities = RNG.random((IMAGES, 5)).astype(np.float32)
    wrong = EvalData(UNLABELLED.inputs, (probabilities.argmax(axis=1) + 1) % 5, "file")
    assert score([probabilities], wrong, [probabilities])[:2] == (0.0, ACCURACY)
    assert score([probabilities], wrong, [probabilities], task="agreement")[:2] == (1.0, TOP1_AGREEMENT)


def test_the_catalog_and_unknown_tasks():
    assert list(TASKS) == ["auto", "classification", "detection", "ctc", "agreement"]
    assert all(task.label and task.description.endswith(".") for task in TASKS.values())
    with pytest.raises(TaskMismatch, match="Unknown task metric"):
        score([np.zeros((2, 2))], UNLABELLED, [np.zeros((2, 2))], task="segmentation")


def _detector(path, scale: float):
    """x [batch, 16] -> a YOLOv8-style head [batch, 4 + 3 classes, 20 anchors]: fixed boxes
    on a row, 40 px apart, and class scores linear in x, `scale` times a random matrix."""
    weights = np.zeros((16, 7, 20), dtype=np.float32)
    weights[:, 4:] = np.random.default_rng(5).normal(0, 1, (16, 3, 20)) * scale
    bias = np.zeros((7, 20), dtype=np.float32)
    bias[0], bias[1], bias[2:4] = 40 * np.arange(20) + 20, 20, 30
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["flat"]),
            helper.make_node("Reshape", ["flat", "shape"], ["y"]),
        ],
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7, 20])],
        [
            onnx.numpy_helper.from_array(weights.reshape(16, 140), "w"),
            onnx.numpy_helper.from_array(bias.reshape(140), "b"),
            onnx.numpy_helper.from_array(np.array([-1, 7, 20], dtype=np.int64), "shape"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _detection_session(tmp_path, scale: float, truth=None):
    """`truth`: a function of the original's outputs giving the .npz's ground truth."""
    from webapp.engine.runner import SessionJob, run_session

    model = _detector(tmp_path / "detector.onnx", scale)
    x = RNG.uniform(0, 1, (32, 16)).astype(np.float32)
    labels = {}
    if truth is not None:
        labels = truth(loading.run_onnx(model, 1).run({"x": x})[0])
    np.savez(tmp_path / "eval.npz", x=x, **labels)
    job = SessionJob(
        session_id=1,
        model_path=str(model),
        model_format="onnx",
        input_specs=[{"name": "x", "shape": [None, 16], "dtype": "float32"}],
        steps=[{"technique": "quantization", "params": {"mode": "int8_dynamic"}}],
        criteria={"threads": 1, "latency_batch_size": 8, "min_accuracy_retention_percent": 99.0},
        work_dir=str(tmp_path / "work"),
        eval_data_path=str(tmp_path / "eval.npz"),
        latency_seconds=0.05,
        task="detection",
    )
    return run_session(job, progress=lambda *a: None, event=lambda *a: None, cancelled=lambda: False)


def test_a_detection_session_reports_what_its_figure_rests_on(tmp_path):
    """Class scores that never reach 0.25: the session is judged on the original's most
    confident boxes, one per image, and its results say how many and at what confidence."""
    results = _detection_session(tmp_path, scale=0.02).results
    assert results["accuracy_kind"] == DETECTION_F1
    assert results["reference_detections"] == 32
    assert 0.01 <= results["detection_confidence"] < 0.25


def test_a_detection_session_on_data_the_original_sees_nothing_in_fails_plainly(tmp_path):
    with pytest.raises(TaskMismatch, match="detects nothing"):
        _detection_session(tmp_path, scale=0.0)


def _truth_of(output: np.ndarray, slots: int = 6) -> dict[str, np.ndarray]:
    """Ground truth that says what a YOLO head [images, 4 + classes, anchors] finds above
    0.25: corner boxes and classes, padded to `slots` rows with class -1."""
    boxes = np.zeros((IMAGES, slots, 4), dtype=np.float32)
    classes = np.full((IMAGES, slots), -1, dtype=np.int64)
    for image in range(IMAGES):
        confident = np.flatnonzero(output[image, 4:].max(axis=0) >= 0.25)
        for row, anchor in enumerate(confident):
            cx, cy, w, h = output[image, :4, anchor]
            boxes[image, row] = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            classes[image, row] = output[image, 4:, anchor].argmax()
    return {"y_boxes": boxes, "y_box_classes": classes}


def test_labelled_boxes_judge_both_models_against_the_truth():
    """With y_boxes, the original is scored too (it may miss a labelled box), and a
    candidate is judged on the truth, not on agreeing with the original."""
    original = yolo_output()
    truth = _truth_of(original)
    labelled = EvalData(UNLABELLED.inputs, None, "file", truth=truth)
    value, kind, compared = score([original], labelled, [original], task="detection")
    assert (value, kind) == (1.0, LABELLED_DETECTION_F1)
    assert compared[0]["reference_detections"] == 24
    # The truth holds a box the original never finds: the original scores below 1, and a
    # candidate that finds the same boxes scores the same.
    truth[BOX_CLASSES][0, 5], truth[BOXES][0, 5] = 1, [900, 900, 960, 960]
    original_score = score([original], labelled, [original], task="detection")[0]
    assert original_score == pytest.approx((2 * 4 / 9 + 5) / 6, abs=1e-6)
    assert score([original.copy()], labelled, [original], task="detection")[0] == original_score


def test_labelled_sequences_judge_the_decoding_against_the_truth():
    tokens = [[1, 2, 3], [4, 4], [5], [2]]
    truth = {"y_sequences": np.array([[1, 2, 3], [4, 4, 0], [5, 0, 0], [3, 0, 0]])}  # the last differs
    labelled = EvalData({"x": np.zeros((4, 1), np.float32)}, None, "file", truth=truth)
    value, kind, _ = score([sequences_output(tokens)], labelled, [sequences_output(tokens)], task="ctc")
    assert (value, kind) == (0.75, SEQUENCE_ACCURACY)


def test_retention_against_labels_is_relative_to_the_original():
    from webapp.engine.evaluation import Measurement
    from webapp.engine.outcomes import retention

    def measured(value, kind):
        return Measurement(1, None, 1.0, 1.0, 1.0, 1, value, kind, [])

    for kind in (ACCURACY, LABELLED_DETECTION_F1, SEQUENCE_ACCURACY):
        assert retention(measured(0.8, kind), measured(0.78, kind)) == pytest.approx(97.5)
    assert retention(measured(1.0, DETECTION_F1), measured(0.78, DETECTION_F1)) == pytest.approx(78.0)


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"y_boxes": np.zeros((6, 2, 4), np.float32)}, "come together"),
        (
            {"y_boxes": np.zeros((6, 2, 3), np.float32), "y_box_classes": np.zeros((6, 2), int)},
            "[6, boxes, 4]",
        ),
        (
            {"y_boxes": np.zeros((6, 2, 4), np.float32), "y_box_classes": np.zeros((6, 3), int)},
            "one class per box",
        ),
        (
            {"y_boxes": np.full((6, 2, 4), np.nan, np.float32), "y_box_classes": np.zeros((6, 2), int)},
            "finite",
        ),
        ({"y_boxes": np.zeros((6, 2, 4), np.float32), "y_box_classes": np.zeros((6, 2))}, "whole numbers"),
        ({"y_sequences": np.zeros((5, 3), int)}, "[6, length]"),
        ({"y_sequences": np.zeros((6, 0), int)}, "length at least 1"),
        (
            {"y_boxes": np.zeros((6, 0, 4), np.float32), "y_box_classes": np.zeros((6, 0), int)},
            "at least one box a sample",
        ),
        ({"y_boxes": np.zeros((6, 2, 4), bool), "y_box_classes": np.zeros((6, 2), int)}, "not bool"),
        (
            {
                "y_boxes": np.zeros((6, 2, 4), np.float32),
                "y_box_classes": np.full((6, 2), 2**64 - 1, np.uint64),
            },
            "from -2,147,483,648 to 2,147,483,647",
        ),
        ({"y_sequences": np.full((6, 3), 2**40)}, "from -2,147,483,648"),
        # 12.6M values (12 MB as int8): well inside the inputs' budget, far above the truth's own.
        ({"y_sequences": np.ones((6, 2**21), np.int8)}, "at most 8,388,608"),
    ],
)
def test_ground_truth_that_does_not_fit_is_refused_before_any_session(tmp_path, arrays, words):
    from webapp.engine.datasets import load_npz
    from webapp.engine.errors import DatasetRejected
    from webapp.engine.loading import InputSpec

    np.savez(tmp_path / "d.npz", x=np.zeros((IMAGES, 4), np.float32), **arrays)
    with pytest.raises(DatasetRejected) as caught:
        load_npz(tmp_path / "d.npz", [InputSpec("x", [None, 4])])
    assert words in caught.value.message


def test_ground_truth_is_read_with_the_inputs(tmp_path):
    from webapp.engine.datasets import load_npz
    from webapp.engine.loading import InputSpec

    truth = _truth_of(yolo_output())
    np.savez(tmp_path / "d.npz", images=np.zeros((IMAGES, 4), np.float32), **truth)
    data = load_npz(tmp_path / "d.npz", [InputSpec("images", [None, 4])])
    assert sorted(data.truth) == sorted([BOXES, BOX_CLASSES])
    assert np.array_equal(data.truth[BOXES], truth[BOXES])


def test_a_detection_session_with_labelled_boxes_is_judged_on_them(tmp_path):
    """The truth: every box of the original's above 0.25, but one image's boxes moved far
    off. The original scores below 1 against it; retention is relative to that score."""

    def truth(output):
        boxes, classes = [], []
        for image in output:
            keep = image[4:].max(axis=0) >= 0.25
            cx, cy, w, h = image[:4, keep]
            boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
            classes.append(image[4:, keep].argmax(axis=0))
        slots = max(len(b) for b in boxes)
        y_boxes = np.zeros((len(boxes), slots, 4), np.float32)
        y_classes = np.full((len(boxes), slots), -1, np.int64)
        for i, (b, c) in enumerate(zip(boxes, classes, strict=True)):
            y_boxes[i, : len(b)], y_classes[i, : len(c)] = b, c
        y_boxes[0] += 5000.0
        return {"y_boxes": y_boxes, "y_box_classes": y_classes}

    results = _detection_session(tmp_path, scale=0.3, truth=truth).results
    assert results["accuracy_kind"] == LABELLED_DETECTION_F1
    assert results["accuracy_before"] < 1.0
    assert results["reference_detections"] > 32
    assert results["detection_confidence"] == 0.25
    expected = 100 * results["accuracy_after"] / results["accuracy_before"]
    assert results["accuracy_retention_percent"] == pytest.approx(expected, abs=0.01)
