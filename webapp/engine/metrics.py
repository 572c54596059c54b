"""The task metrics a model's owner picks at upload, computed from the model's outputs alone
(no code of the user's runs anywhere).

Detection and sequence metrics compare a candidate's outputs with the original model's, so
like every agreement their baseline is 1.0 and retention is the score itself
(outcomes.retention). Where the evaluation data holds ground truth for them (boxes and
their classes, or token sequences: datasets.TRUTH), they judge against it instead, and
retention is relative to the original's score, as for accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import datasets
from .errors import EngineError

AUTO = "auto"
CLASSIFICATION = "classification"
DETECTION = "detection"
CTC = "ctc"
AGREEMENT = "agreement"


@dataclass(frozen=True)
class Task:
    id: str
    label: str
    description: str


# The catalog: the upload form, the API's validation and the model page read it.
TASKS: dict[str, Task] = {
    task.id: task
    for task in (
        Task(
            AUTO,
            "Automatic",
            "Accuracy when the evaluation data has labels and the model a class-score output; "
            "otherwise the worst agreement of any output with the original model's.",
        ),
        Task(
            CLASSIFICATION,
            "Classification",
            "Accuracy of the class-score output against the labels; without labels, how often "
            "its top class stays the original model's.",
        ),
        Task(
            DETECTION,
            "Object detection",
            "Boxes from a YOLO-style head or from boxes, scores and classes outputs, kept above "
            "0.25 confidence and after per-class NMS: F1 at IoU 0.5 against the original "
            "model's detections. Where the original finds fewer than one box per image at 0.25, "
            "its most confident boxes (one per image) set the confidence instead. With y_boxes "
            "and y_box_classes in the evaluation data: F1 against those.",
        ),
        Task(
            CTC,
            "Text recognition (CTC)",
            "Greedy CTC decoding (blank 0) of a [samples, time, classes] output: the share of "
            "sequences decoded exactly as the original model's, or with y_sequences in the "
            "evaluation data, exactly as those.",
        ),
        Task(
            AGREEMENT,
            "Agreement",
            "The worst agreement of any output with the original model's, even when the "
            "evaluation data has labels.",
        ),
    )
}

DETECTION_F1 = "detection_f1"
SEQUENCE_EXACT_MATCH = "sequence_exact_match"
# The same against the evaluation data's ground truth (datasets.TRUTH).
LABELLED_DETECTION_F1 = "labelled_detection_f1"
SEQUENCE_ACCURACY = "sequence_accuracy"

CONFIDENCE = 0.25
# Below this a detector's boxes are noise: an original that finds nothing above it cannot
# judge a candidate.
MIN_CONFIDENCE = 0.01
NMS_IOU = 0.45
MATCH_IOU = 0.5
# Per image, before NMS: a broken head that scores every anchor high still costs little.
MAX_CANDIDATES = 1000
MAX_DETECTIONS = 300
BLANK = 0

YOLO = "yolo"
BOXES = "boxes"

# One image's detections: corner boxes [k, 4], confidences [k], classes [k].
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]


class TaskMismatch(EngineError):
    """The model's outputs are not what the chosen task metric reads."""

    kind = "task_mismatch"


def _shapes(outputs: list[np.ndarray]) -> str:
    return ", ".join(str(list(output.shape[1:])) for output in outputs) or "none"


def _floating(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def _whole(array: np.ndarray) -> bool:
    if not np.issubdtype(array.dtype, np.number):
        return False
    return not _floating(array) or bool(np.all(np.mod(array, 1) == 0))


@dataclass(frozen=True)
class DetectionHead:
    """Where a model keeps its detections: one YOLO output, or boxes, scores, classes and
    perhaps a count of valid rows."""

    kind: str
    outputs: tuple[int, ...]
    channels_first: bool = False  # YOLO [samples, 4 + classes, anchors], as YOLOv8 exports


def _boxes_head(outputs: list[np.ndarray]) -> DetectionHead | None:
    for index, boxes in enumerate(outputs):
        if boxes.ndim != 3 or boxes.shape[2] != 4 or not _floating(boxes):
            continue
        rows = boxes.shape[:2]
        pairs = [i for i, output in enumerate(outputs) if i != index and output.shape == rows]
        if len(pairs) < 2:
            continue
        # Classes are whole numbers (often stored as floats); confidences are fractions.
        ranked = sorted(
            pairs,
            key=lambda i: (
                _whole(outputs[i]),
                not _floating(outputs[i]),
                float(np.max(outputs[i], initial=0)),
            ),
            reverse=True,
        )
        classes, scores = ranked[0], ranked[1]
        count = next(
            (
                i
                for i, output in enumerate(outputs)
                if i not in (index, scores, classes)
                and output.shape in ((rows[0],), (rows[0], 1))
                and _whole(output)
            ),
            None,
        )
        chosen = (index, scores, classes) if count is None else (index, scores, classes, count)
        return DetectionHead(BOXES, chosen)
    return None


def detection_head(outputs: list[np.ndarray]) -> DetectionHead:
    """The detection head among `outputs`, or TaskMismatch when there is none."""
    head = _boxes_head(outputs)
    if head is not None:
        return head
    for index, output in enumerate(outputs):
        if output.ndim == 3 and _floating(output) and min(output.shape[1:]) >= 5:
            return DetectionHead(YOLO, (index,), channels_first=output.shape[1] < output.shape[2])
    raise TaskMismatch(
        "The detection metric needs a YOLO-style output ([4 + classes, anchors] or "
        "[anchors, 4 + classes] per sample) or boxes [K, 4] with scores and classes [K]; this "
        f"model's outputs per sample are {_shapes(outputs)}. Upload it with another task metric."
    )


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = union - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _select(boxes: np.ndarray, confidence: np.ndarray, classes: np.ndarray, floor: float) -> Detections:
    """Finite detections at `floor` confidence or more after per-class NMS, the most
    confident first. NMS is greedy from the top, so the detections at a higher floor are
    exactly these cut at it."""
    keep = (confidence >= floor) & np.isfinite(boxes).all(axis=1)
    boxes, confidence, classes = boxes[keep], confidence[keep], classes[keep]
    order = np.argsort(-confidence, kind="stable")[:MAX_CANDIDATES]
    boxes, confidence, classes = boxes[order], confidence[order], classes[order]
    # Boxes of different classes moved apart so that one NMS pass never lets them meet.
    span = float(np.ptp(boxes)) + 1.0 if len(boxes) else 1.0
    shifted = boxes + (classes * span)[:, None]
    kept: list[int] = []
    remaining = np.arange(len(boxes))
    while remaining.size and len(kept) < MAX_DETECTIONS:
        first, rest = remaining[0], remaining[1:]
        kept.append(int(first))
        remaining = rest[_iou(shifted[first], shifted[rest]) <= NMS_IOU]
    return boxes[kept], confidence[kept], classes[kept]


def _corners(boxes: np.ndarray) -> np.ndarray:
    """Corner boxes with the smaller coordinate first, whichever axis order the model uses
    ([x1, y1, x2, y2] or [y1, x1, y2, x2]: both models use the same, and IoU is the same)."""
    return np.concatenate(
        [np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1
    )


def detections(outputs: list[np.ndarray], head: DetectionHead, floor: float = CONFIDENCE) -> list[Detections]:
    """Each sample's detections at `floor` confidence or more, decoded from `head`."""
    found = []
    if head.kind == YOLO:
        predictions = outputs[head.outputs[0]]
        for sample in predictions:
            rows = (sample.T if head.channels_first else sample).astype(np.float64)
            centre, size, class_scores = rows[:, :2], rows[:, 2:4], rows[:, 4:]
            classes = class_scores.argmax(axis=1)
            confidence = class_scores[np.arange(len(rows)), classes]
            boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
            found.append(_select(boxes, confidence, classes, floor))
        return found
    boxes, scores, classes = (outputs[i] for i in head.outputs[:3])
    counts = outputs[head.outputs[3]].reshape(-1) if len(head.outputs) == 4 else None
    for sample in range(len(boxes)):
        valid = boxes.shape[1] if counts is None else int(np.clip(counts[sample], 0, boxes.shape[1]))
        found.append(
            _select(
                _corners(boxes[sample, :valid].astype(np.float64)),
                scores[sample, :valid].astype(np.float64),
                np.rint(classes[sample, :valid]).astype(np.int64),
                floor,
            )
        )
    return found


def _above(found: list[Detections], floor: float) -> list[Detections]:
    return [(boxes[c >= floor], c[c >= floor], classes[c >= floor]) for boxes, c, classes in found]


def reference_confidence(found: list[Detections]) -> float:
    """The confidence the original's detections are taken at, from its detections at
    MIN_CONFIDENCE: CONFIDENCE, unless the original finds fewer boxes there than there are
    images. A candidate that found nothing would then agree on nearly every image, so the
    original's most confident boxes, one per image, set a lower confidence."""
    confidences = np.sort(np.concatenate([c for _, c, _ in found]))[::-1]
    if np.count_nonzero(confidences >= CONFIDENCE) >= len(found) or not len(confidences):
        return CONFIDENCE
    return float(confidences[min(len(found), len(confidences)) - 1])


def _f1(candidate: Detections, reference: Detections) -> float:
    """F1 of one image's detections against the reference's: a detection counts when it has
    the class of a reference box not matched yet and overlaps it by IoU >= 0.5."""
    boxes, confidence, classes = candidate
    reference_boxes, _, reference_classes = reference
    if not len(boxes) and not len(reference_boxes):
        return 1.0  # both saw nothing: they agree
    if not len(boxes) or not len(reference_boxes):
        return 0.0
    taken = np.zeros(len(reference_boxes), dtype=bool)
    matched = 0
    for index in np.argsort(-confidence, kind="stable"):
        overlap = _iou(boxes[index], reference_boxes)
        overlap[(reference_classes != classes[index]) | taken] = 0.0
        best = int(overlap.argmax())
        if overlap[best] >= MATCH_IOU:
            taken[best] = True
            matched += 1
    return 2.0 * matched / (len(boxes) + len(reference_boxes))


def labelled_detections(boxes: np.ndarray, classes: np.ndarray) -> list[Detections]:
    """Each sample's ground-truth boxes (rows whose class is below 0 pad)."""
    found = []
    for sample_boxes, sample_classes in zip(boxes, classes, strict=True):
        real = sample_classes >= 0
        corners = _corners(sample_boxes[real].astype(np.float64))
        found.append((corners, np.ones(len(corners)), sample_classes[real].astype(np.int64)))
    return found


def detection_f1(
    outputs: list[np.ndarray], reference: list[np.ndarray], truth: dict[str, np.ndarray] | None = None
) -> tuple[float, str, list[dict]]:
    """Mean per-image F1 of the candidate's detections against the original's, both taken at
    reference_confidence, or, with ground-truth boxes in `truth`, of its detections at
    CONFIDENCE against those. Raises TaskMismatch when there is nothing to find: every
    candidate would then agree, however broken."""
    head = detection_head(reference)
    truth = truth or {}
    labelled = datasets.BOXES in truth
    if labelled:
        expected = labelled_detections(truth[datasets.BOXES], truth[datasets.BOX_CLASSES])
        floor, kind = CONFIDENCE, LABELLED_DETECTION_F1
    else:
        original = detections(reference, head, MIN_CONFIDENCE)
        floor, kind = reference_confidence(original), DETECTION_F1
        expected = _above(original, floor)
    # How many boxes the figure rests on, and at what confidence: the report says both.
    found = {
        "output": head.outputs[0],
        "kind": kind,
        "reference_detections": sum(len(r[0]) for r in expected),
        "confidence": round(floor, 6),
    }
    if not found["reference_detections"]:
        raise TaskMismatch(
            "The evaluation data's y_boxes hold no box (every class is below 0), so detection "
            "F1 could not tell a broken candidate from a good one."
            if labelled
            else f"The original model detects nothing in the evaluation data, not even at "
            f"{MIN_CONFIDENCE:g} confidence, so detection F1 could not tell a broken candidate "
            "from a good one. Upload evaluation data that shows the objects it detects, or "
            "choose another task metric."
        )
    if len(outputs) != len(reference) or any(outputs[i].shape != reference[i].shape for i in head.outputs):
        return 0.0, kind, [{**found, "value": 0.0}]
    seen = detections(outputs, head, floor)
    value = round(float(np.mean([_f1(c, r) for c, r in zip(seen, expected, strict=True)])), 6)
    return value, kind, [{**found, "value": value}]


def detection_basis(compared: list[dict]) -> dict:
    """What a detection figure rests on (from detection_f1's details), for the report."""
    for entry in compared:
        if entry.get("kind") in (DETECTION_F1, LABELLED_DETECTION_F1) and "reference_detections" in entry:
            return {
                "reference_detections": entry["reference_detections"],
                "detection_confidence": entry["confidence"],
            }
    return {}


def samples_first(output: np.ndarray, batch: int) -> np.ndarray:
    """A time-major [time, batch, classes] output as [batch, time, classes], told apart by
    which axis has the batch's size."""
    if output.ndim == 3 and output.shape[0] != batch and output.shape[1] == batch:
        return output.transpose(1, 0, 2)
    return output


def ctc_output(outputs: list[np.ndarray]) -> int:
    """The index of the first [samples, time, classes] output of floats."""
    for index, output in enumerate(outputs):
        if output.ndim == 3 and _floating(output) and output.shape[2] >= 2:
            return index
    raise TaskMismatch(
        "The CTC metric needs an output of scores [time, classes] per sample; this model's "
        f"outputs per sample are {_shapes(outputs)}. Upload it with another task metric."
    )


def ctc_decode(output: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC: the best class at each time step, repeats collapsed, blanks dropped."""
    best = output.argmax(axis=2)
    keep = np.ones(best.shape, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != BLANK
    return [tuple(row[mask].tolist()) for row, mask in zip(best, keep, strict=True)]


def sequence_exact_match(
    outputs: list[np.ndarray], reference: list[np.ndarray], truth: dict[str, np.ndarray] | None = None
) -> tuple[float, str, list[dict]]:
    """The share of samples whose decoded sequence is exactly the original's, or with
    ground-truth sequences in `truth` (0 or below pads), exactly those."""
    index = ctc_output(reference)
    truth = truth or {}
    labelled = datasets.SEQUENCES in truth
    kind = SEQUENCE_ACCURACY if labelled else SEQUENCE_EXACT_MATCH
    found = {"output": index, "kind": kind}
    if len(outputs) <= index or outputs[index].shape != reference[index].shape:
        return 0.0, kind, [{**found, "value": 0.0}]
    expected = (
        [tuple(row[row > BLANK].tolist()) for row in truth[datasets.SEQUENCES]]
        if labelled
        else ctc_decode(reference[index])
    )
    same = [a == b for a, b in zip(ctc_decode(outputs[index]), expected, strict=True)]
    value = round(float(np.mean(same)), 6)
    return value, kind, [{**found, "value": value}]
