"""Benchmark: Optideck's search beside ONNX Runtime by hand, on real models (issue 14).

    nice -n 10 python3 bench/search.py [--quick] [--models demo-mlp,ocr-rec,...]
        [--budget-minutes 10] [--latency-seconds 2] [--batch 8]
        [--output /tmp/bench_search_output.txt]

For each model (made or shipped locally: the demo models trained on scikit-learn's
digits, an skl2onnx MLPClassifier, and where their wheels are installed rapidocr's
text-direction classifier and PP-OCRv4 recognizer and nudenet's YOLOv8n detector, with
evaluation data this script renders or crops), it builds these arms:
 1. fp32: the original;
 2. ORT quantize_dynamic, QInt8;
 3. ORT static QDQ per-channel after quant_pre_process (min-max, activations QUInt8,
    weights QInt8), calibrated on the evaluation data;
 4. ORT static with an op-type subset: Conv only, MatMul/Gemm only, Conv+MatMul/Gemm
    (each is printed; `*` marks the best one holding >= 99 % of the metric);
 5. onnx-neural-compressor's autotune and Olive's static quantization, where installed;
 6. Optideck's search (the engine in-process, run_session with technique "auto"):
    the chosen candidate.
Then, in one process, every arm is timed in paired rounds against the same fp32 model
(webapp.engine.timing.compare) and scored with the model's task metric
(webapp.engine.evaluation.measure). Prints a table; nothing is asserted. The `bench`
extra of pyproject.toml installs the optional packages.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from webapp.engine.demo_models import quiet

MIN_RETENTION = 99.0
CALIBRATION_SAMPLES = 256
ALL_MODELS = ("demo-mlp", "demo-cnn", "skl2onnx-mlp", "ocr-cls", "ocr-rec", "yolo")
QUICK_MODELS = ("demo-mlp", "demo-cnn")
SUBSETS = {
    "Conv": ("Conv",),
    "MatMul/Gemm": ("MatMul", "Gemm"),
    "Conv+MatMul/Gemm": ("Conv", "MatMul", "Gemm"),
}
# Checked with `pip install --dry-run onnx-neural-compressor` on this machine: it pins
# numpy 1.x, which would replace the numpy 2 Optideck requires.
INC_WHY_NOT = (
    "onnx-neural-compressor not installed: `pip install --dry-run onnx-neural-compressor` "
    "would replace numpy 2.4.6 with 1.26.4 (Optideck needs numpy>=2), so it was not installed"
)
WORDS = [
    "invoice",
    "total",
    "amount",
    "date",
    "paid",
    "order",
    "number",
    "customer",
    "account",
    "balance",
    "street",
    "city",
    "station",
    "platform",
    "departure",
    "arrival",
    "ticket",
    "price",
    "receipt",
    "tax",
    "discount",
    "coffee",
    "bread",
    "milk",
    "sugar",
    "water",
    "north",
    "south",
    "east",
    "west",
    "open",
    "closed",
    "exit",
    "entrance",
    "floor",
    "room",
]


def criteria(batch: int) -> dict:
    """The search's criteria: as tests/engine/test_search.py, with the latency batch."""
    return {
        "threads": 1,
        "latency_batch_size": batch,
        "min_accuracy_retention_percent": MIN_RETENTION,
        "latency_tolerance_percent": 5.0,
        "enabled_techniques": ["compression", "pruning", "quantization"],
        "forbidden_techniques": [],
        "weight_accuracy": 0.5,
        "weight_latency": 0.3,
        "weight_size": 0.2,
        "max_optimization_time_minutes": 30,
        "max_inference_time_ms": 0,
        "max_size_reduction_percent": 0,
    }


@dataclass
class Case:
    """One model: its ONNX file, its evaluation .npz, its input and task metric."""

    name: str
    path: Path
    eval_path: Path
    input_name: str
    shape: list  # [None, ...]
    task: str
    notes: list[str] = field(default_factory=list)

    @property
    def specs(self) -> list[dict]:
        return [{"name": self.input_name, "shape": self.shape, "dtype": "float32"}]


@dataclass
class Arm:
    name: str
    path: Path | None
    wall_s: float
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    row: dict | None = None  # filled when measured
    hand: bool = False  # an arm the search is judged against


def short(exc: BaseException, limit: int = 400) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Models ---------------------------------------------------------------------------------


def demo_case(folder: Path, image: bool) -> Case:
    from webapp.engine import demo_models

    data = demo_models.digits(image=image)
    model = demo_models.cnn() if image else demo_models.mlp()
    accuracy = demo_models.train(model, data)
    stem = "cnn" if image else "mlp"
    files = demo_models.save(model, data.x_test, folder, stem)
    eval_path = demo_models.save_eval_data(data, folder / f"{stem}-eval.npz")
    shape = [None, 1, 8, 8] if image else [None, 64]
    case = Case(f"demo-{stem}", files["onnx"], eval_path, "input", shape, "classification")
    case.notes.append(f"trained in torch, test accuracy {accuracy:.4f}, {len(data.x_test)} test digits")
    return case


def skl2onnx_case(folder: Path) -> Case:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    from webapp.engine import demo_models

    data = demo_models.digits(image=False)
    classifier = MLPClassifier(hidden_layer_sizes=(512, 512), max_iter=300, random_state=0)
    with quiet():
        classifier.fit(data.x_train, data.y_train)
        onx = to_onnx(classifier, data.x_train[:1], options={id(classifier): {"zipmap": False}})
    path = folder / "skl2onnx-mlp.onnx"
    path.write_bytes(onx.SerializeToString())
    eval_path = demo_models.save_eval_data(data, folder / "skl2onnx-eval.npz")
    name = onx.graph.input[0].name
    case = Case("skl2onnx-mlp", path, eval_path, name, [None, 64], "classification")
    outputs = ", ".join(o.name for o in onx.graph.output)
    opset = max(o.version for o in onx.opset_import if o.domain in ("", "ai.onnx"))
    case.notes.append(
        f"MLPClassifier(512, 512), test accuracy {classifier.score(data.x_test, data.y_test):.4f}; "
        f"outputs {outputs} (label first), opset {opset}"
    )
    return case


def _font(size: int):
    from PIL import ImageFont

    for candidate in (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ):
        if Path(candidate).exists():
            return ImageFont.truetype(candidate, size)
    return ImageFont.load_default(size=size)  # Pillow's own font (needs FreeType)


def text_lines(count: int, width: int, seed: int, flip_half: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rendered text lines as PaddleOCR's classifier and recognizer take them: resized to
    height 48 keeping the ratio (at most `width` wide), scaled to -1..1, padded with 0 on
    the right. With `flip_half`, every other line is turned 180 degrees (label 1)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for index in range(count):
        words = [str(rng.choice(WORDS)) for _ in range(rng.integers(1, 4))]
        if rng.random() < 0.5:
            words.append(str(rng.integers(1, 10000)))
        text = " ".join(w.capitalize() if rng.random() < 0.3 else w for w in words)
        font = _font(int(rng.integers(24, 41)))
        left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
        pad = int(rng.integers(4, 13))
        ink, paper = int(rng.integers(0, 81)), int(rng.integers(170, 256))
        image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
        ImageDraw.Draw(image).text((pad - left, pad - top), text, fill=ink, font=font)
        flipped = flip_half and index % 2 == 1
        if flipped:
            image = image.rotate(180)
        resized_w = min(width, math.ceil(48 * image.width / image.height))
        pixels = np.asarray(image.resize((resized_w, 48)), dtype=np.float32)
        pixels += np.random.default_rng(seed + index).normal(0, 4, pixels.shape).astype(np.float32)
        line = (np.clip(pixels, 0, 255) / 255 - 0.5) / 0.5
        sample = np.zeros((3, 48, width), dtype=np.float32)
        sample[:, :, :resized_w] = line
        xs.append(sample)
        ys.append(1 if flipped else 0)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def rapidocr_model(name: str) -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / name


def ocr_cls_case(folder: Path) -> Case:
    path = rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    x, y = text_lines(128, 192, seed=1, flip_half=True)
    eval_path = folder / "ocr-cls-eval.npz"
    np.savez(eval_path, x=x, y=y)
    case = Case("ocr-cls", path, eval_path, "x", [None, 3, 48, 192], "classification")
    case.notes.append("rapidocr's PP-OCR text-direction classifier; 128 rendered lines, half turned 180 deg")
    return case


def ocr_rec_case(folder: Path) -> Case:
    path = rapidocr_model("ch_PP-OCRv4_rec_infer.onnx")
    x, _ = text_lines(128, 320, seed=2, flip_half=False)
    eval_path = folder / "ocr-rec-eval.npz"
    np.savez(eval_path, x=x)
    case = Case("ocr-rec", path, eval_path, "x", [None, 3, 48, 320], "ctc")
    case.notes.append("rapidocr's PP-OCRv4 recognizer; 128 rendered lines; exact match vs fp32 decoding")
    return case


def people_photos() -> list[np.ndarray]:
    """Photos of people shipped inside installed wheels (nudenet's detector finds faces and
    clothing in them), then scikit-learn's two sample photos, where it finds nothing."""
    import matplotlib
    import skimage
    from PIL import Image
    from sklearn.datasets import load_sample_images

    files = [
        Path(skimage.__file__).parent / "data" / "astronaut.png",
        Path(skimage.__file__).parent / "data" / "camera.png",
        Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg",
    ]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files] + list(load_sample_images().images)


def yolo_case(folder: Path) -> Case:
    import nudenet
    from PIL import Image

    path = Path(nudenet.__file__).parent / "320n.onnx"
    photos = people_photos()
    rng = np.random.default_rng(3)
    xs = []
    for index in range(48):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        side = int(min(height, width) * rng.uniform(0.5, 1.0))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((320, 320))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        xs.append(np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255)
    eval_path = folder / "yolo-eval.npz"
    np.savez(eval_path, x=np.stack(xs))
    case = Case("yolo", path, eval_path, "images", [None, 3, 320, 320], "detection")
    case.notes.append(
        "nudenet's YOLOv8n (320n.onnx); 48 crops of five bundled photos (three of people, from "
        "scikit-image and matplotlib, and scikit-learn's two); F1 vs fp32 detections"
    )
    return case


BUILDERS = {
    "demo-mlp": lambda folder: demo_case(folder, image=False),
    "demo-cnn": lambda folder: demo_case(folder, image=True),
    "skl2onnx-mlp": skl2onnx_case,
    "ocr-cls": ocr_cls_case,
    "ocr-rec": ocr_rec_case,
    "yolo": yolo_case,
}


# Hand arms ------------------------------------------------------------------------------


class Reader:
    """quantize_static's calibration reader over the evaluation inputs. Like the engine's,
    it stops taking batches once half the memory left at its start is used (ORT holds every
    batch's tensors: 256 samples of the PP-OCRv4 recognizer took 23.6 GB and the kernel
    killed the benchmark)."""

    def __init__(self, x: np.ndarray, name: str, batch: int):
        from webapp.engine.techniques.quantization import memory_guard

        x = x[:CALIBRATION_SAMPLES]
        self.feeds = iter([{name: np.ascontiguousarray(x[s : s + batch])} for s in range(0, len(x), batch)])
        self.exhausted = memory_guard()
        self.started = False

    def get_next(self):
        if self.started and self.exhausted is not None and self.exhausted():
            return None
        self.started = True
        return next(self.feeds, None)


def timed_arm(name: str, build, hand: bool = True) -> Arm:
    started = time.perf_counter()
    notes: list[str] = []
    try:
        with quiet():
            path = build(notes)
    except Exception as exc:
        return Arm(name, None, time.perf_counter() - started, short(exc), notes, hand=hand)
    return Arm(name, path, time.perf_counter() - started, None, notes, hand=hand)


def preprocessed(src: Path, work: Path, notes: list[str]) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = work / "pre.onnx"
    if target.exists():
        return target
    try:
        quant_pre_process(str(src), str(target))
    except Exception as exc:
        notes.append(f"quant_pre_process failed ({short(exc, 160)}); retried without symbolic shapes")
        quant_pre_process(str(src), str(target), skip_symbolic_shape=True)
    return target


def opset13(src: Path, work: Path, notes: list[str]) -> Path:
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 13:
        return src
    notes.append(f"opset {opset} converted to 13 (per-channel QDQ needs it)")
    target = work / "pre13.onnx"
    onnx.save(version_converter.convert_version(model, 13), str(target))
    return target


def static_qdq(case: Case, x: np.ndarray, work: Path, dst: Path, batch: int, notes, op_types=None) -> Path:
    """What a careful person does by hand, fixing what ORT trips on as they meet it."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source = opset13(preprocessed(case.path, work, notes), work, notes)

    def run(extra):
        quantize_static(
            str(source),
            str(dst),
            Reader(x, case.input_name, batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=extra,
        )
        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])

    try:
        run({})
    except Exception as exc:
        notes.append(
            f"plain call failed ({short(exc, 200)}); retried with QDQDisableWeightAdjustForInt32Bias"
        )
        run({"QDQDisableWeightAdjustForInt32Bias": True})
    return dst


def hand_arms(case: Case, work: Path, batch: int, op_types: set[str]) -> list[Arm]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with np.load(case.eval_path) as data:
        x = data["x"]
    arms = []

    def dynamic(notes):
        dst = work / "ort-dynamic.onnx"
        try:
            quantize_dynamic(str(case.path), str(dst), weight_type=QuantType.QInt8)
        except Exception as exc:
            notes.append(f"plain call failed ({short(exc, 200)}); retried after quant_pre_process")
            quantize_dynamic(str(preprocessed(case.path, work, notes)), str(dst), weight_type=QuantType.QInt8)
        return dst

    arms.append(timed_arm("ORT dynamic QInt8", dynamic))
    arms.append(
        timed_arm(
            "ORT static QDQ per-channel",
            lambda n: static_qdq(case, x, work, work / "ort-static.onnx", batch, n),
        )
    )
    for label, ops in SUBSETS.items():
        if not set(ops) & op_types:
            continue
        if label == "Conv+MatMul/Gemm" and not ("Conv" in op_types and {"MatMul", "Gemm"} & op_types):
            continue  # the same as one of the two above
        dst = work / f"ort-static-{label.replace('/', '-').replace('+', '-')}.onnx"
        arms.append(
            timed_arm(
                f"ORT static {label} only",
                lambda n, dst=dst, ops=ops: static_qdq(case, x, work, dst, batch, n, op_types=ops),
            )
        )
    return arms


OLIVE_SCRIPT = """
import numpy as np
from olive.data.registry import Registry


@Registry.register_dataset()
def optideck_npz_{name}(data_path, input_name, samples, **kwargs):
    with np.load(data_path) as data:
        x = data["x"][:samples]
    return [({input_name: sample}, 0) for sample in x]
"""


# Olive's calibration held 23.8 GB on the PP-OCRv4 recognizer, and the kernel killed the
# whole benchmark: it runs in a child process whose address space is capped instead.
OLIVE_MEMORY_GB = 16


def _olive_child(config: dict, cap_bytes: int) -> None:
    import resource

    from olive.workflows import run as olive_run

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap_bytes = min(cap_bytes, hard)  # a process may lower its limit, never raise it
    resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
    with quiet():
        olive_run(config)


def olive_arm(case: Case, work: Path, batch: int) -> Arm:
    try:
        import olive  # noqa: F401
    except ImportError as exc:
        return Arm("Olive static quantization", None, 0.0, f"olive-ai not installed ({exc})", hand=True)

    def build(notes):
        folder = work / "olive"
        folder.mkdir(exist_ok=True)
        script = folder / "olive_data.py"
        script.write_text(OLIVE_SCRIPT.replace("{name}", case.name.replace("-", "_")))
        config = {
            "input_model": {"type": "ONNXModel", "model_path": str(case.path)},
            "systems": {
                "local_system": {
                    "type": "LocalSystem",
                    "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
                }
            },
            "data_configs": [
                {
                    "name": "calibration",
                    "user_script": str(script),
                    "load_dataset_config": {
                        "type": f"optideck_npz_{case.name.replace('-', '_')}",
                        "params": {
                            "data_path": str(case.eval_path),
                            "input_name": case.input_name,
                            "samples": CALIBRATION_SAMPLES,
                        },
                    },
                    "dataloader_config": {"batch_size": batch},
                }
            ],
            "passes": {"quantization": {"type": "OnnxStaticQuantization", "data_config": "calibration"}},
            "host": "local_system",
            "target": "local_system",
            "cache_dir": str(folder / "cache"),
            "output_dir": str(folder / "out"),
            "log_severity_level": 4,
        }
        child = multiprocessing.get_context("spawn").Process(
            target=_olive_child, args=(config, OLIVE_MEMORY_GB << 30)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(
                f"Olive's process ended with exit code {child.exitcode} under a {OLIVE_MEMORY_GB} GB "
                "address-space cap (out of memory on this model?)"
            )
        found = sorted((folder / "out").rglob("*.onnx"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise RuntimeError("Olive finished without writing an ONNX model")
        notes.append("Olive 0.13 OnnxStaticQuantization with its defaults (QDQ, min-max, pre-process on)")
        return found[-1]

    return timed_arm("Olive static quantization", build)


# The search -----------------------------------------------------------------------------


def search_arm(case: Case, work: Path, batch: int, budget: float, latency_s: float) -> tuple[Arm, dict]:
    from webapp.engine.runner import SessionJob, run_session

    job = SessionJob(
        1,
        str(case.path),
        "onnx",
        case.specs,
        [{"technique": "auto", "params": {"budget_minutes": budget}}],
        criteria(batch),
        str(work / "search"),
        eval_data_path=str(case.eval_path),
        latency_seconds=latency_s,
        task=case.task,
    )
    events: list[tuple] = []
    started = time.perf_counter()
    try:
        with quiet():
            outcome = run_session(job, lambda *a: None, lambda *a: events.append(a), lambda: False)
    except Exception as exc:
        arm = Arm("Optideck search (chosen)", None, time.perf_counter() - started, short(exc), hand=False)
        arm.notes.append(traceback.format_exc(limit=3).replace("\n", " | "))
        return arm, {}
    wall = time.perf_counter() - started
    results = outcome.results
    arm = Arm("Optideck search (chosen)", Path(outcome.artifact_path), wall, hand=False)
    return arm, {"results": results, "events": events}


# Measuring ------------------------------------------------------------------------------


def measure_arms(case: Case, arms: list[Arm], batch: int, latency_s: float) -> dict:
    """Every arm paired against the same fp32 model, one after another in this process."""
    from webapp.engine import evaluation, loading, timing
    from webapp.engine.datasets import load_npz
    from webapp.engine.loading import InputSpec
    from webapp.engine.outcomes import reduction, retention

    def check():
        return None

    specs = [InputSpec.from_dict(s) for s in case.specs]
    data = load_npz(case.eval_path, specs)
    original = loading.run_onnx(case.path, 1)
    with quiet():
        baseline, reference = evaluation.measure(
            case.path, original, data, batch, None, check, budget_s=latency_s, task=case.task
        )
    feeds = evaluation.first_batch(data, batch)
    base_size = case.path.stat().st_size
    for arm in arms:
        if arm.path is None:
            continue
        try:
            model = loading.run_onnx(arm.path, 1)
            with quiet():
                comparison = timing.compare(original, feeds, model, feeds, check, latency_s)
                m, _ = evaluation.measure(
                    arm.path, model, data, batch, reference, check, timed=comparison.candidate, task=case.task
                )
        except Exception as exc:
            arm.error = f"measuring failed: {short(exc)}"
            continue
        arm.row = {
            "size": m.size_bytes,
            "reduction": reduction(base_size, m.size_bytes),
            "latency": comparison.candidate,
            "speedup": comparison,
            "score": m.score,
            "kind": m.score_kind,
            "retention": retention(baseline, m),
        }
    return {"baseline": baseline, "reference": reference, "data": data}


# Report ---------------------------------------------------------------------------------


class Output:
    def __init__(self, path: Path | None):
        self.path = path
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)
        if self.path:
            self.path.write_text("\n".join(self.lines) + "\n")


HEADER = (
    f"{'model':<13}{'arm':<34}{'bytes':>11}{'smaller':>9}  {'latency ms [95 % CI]':<31}"
    f"{'speedup [95 % CI]':<22}{'metric':>9}{'retained':>10}{'wall s':>8}"
)


def row_text(case: str, arm: Arm, mark: str = "") -> str:
    name = (arm.name + mark)[:33]
    if arm.row is None:
        return f"{case:<13}{name:<34}  -- {arm.error or 'not measured'}"
    r = arm.row
    lat, sp = r["latency"], r["speedup"]
    latency = f"{lat.median_ms:.3f} [{lat.low_ms:.3f}-{lat.high_ms:.3f}]"
    speedup = f"{sp.speedup:.2f}x [{sp.low:.2f}-{sp.high:.2f}]"
    return (
        f"{case:<13}{name:<34}{r['size']:>11}{r['reduction']:>8.1f}%  {latency:<31}{speedup:<22}"
        f"{r['score']:>9.4f}{r['retention']:>9.2f}%{arm.wall_s:>8.1f}"
    )


def holds(arm: Arm) -> bool:
    return arm.row is not None and arm.row["retention"] >= MIN_RETENTION


def verdict(case: Case, arms: list[Arm], search: Arm) -> str:
    hand = [a for a in arms if a.hand and holds(a)]
    if search.row is None:
        return f"{case.name}: the search delivered nothing measurable ({search.error})"
    if not holds(search):
        retained = search.row["retention"]
        return f"{case.name}: the search's chosen candidate is BELOW {MIN_RETENTION:g} % ({retained:.2f} %)"
    if not hand:
        return f"{case.name}: no hand arm holds {MIN_RETENTION:g} %; the search's pick does"
    best = max(hand, key=lambda a: (a.row["speedup"].speedup, -a.row["size"]))
    s, b = search.row, best.row
    smaller = s["size"] <= b["size"]
    overlap = s["speedup"].low <= b["speedup"].high and b["speedup"].low <= s["speedup"].high
    # The engine's own rule for a step (timing.py): slower only where the intervals say so.
    slower = not overlap and s["speedup"].speedup < b["speedup"].speedup
    speed_words = "SLOWER" if slower else "as fast within noise" if overlap else "faster"
    size_gain = 100 * (b["size"] - s["size"]) / b["size"]
    speed_gain = 100 * (s["speedup"].speedup / b["speedup"].speedup - 1)
    beaten_by = [
        a.name for a in hand if a.row["size"] < s["size"] and a.row["speedup"].low > s["speedup"].high
    ]
    text = (
        f"{case.name}: vs the fastest hand arm at >= {MIN_RETENTION:g} % ({best.name}): "
        f"{'as small or smaller' if smaller else 'LARGER'} ({size_gain:+.1f} % bytes saved), "
        f"{speed_words} ({speed_gain:+.1f} % speed"
        f"{', intervals overlap' if overlap else ', intervals apart'}) -> "
        f"{'MEETS' if smaller and not slower else 'misses'} the target"
    )
    if beaten_by:
        text += f"; strictly beaten (smaller and faster beyond the intervals) by: {', '.join(beaten_by)}"
    return text


def search_notes(info: dict) -> list[str]:
    if not info:
        return []
    results = info["results"]
    candidates = results["candidates"]
    tried = [c for c in candidates if c["index"] > 0]
    front = [c for c in candidates if c.get("pareto")]
    chosen = candidates[results["chosen"]]
    lines = [
        f"search: {len(tried)} candidates tried, {len(front)} on the front, "
        f"chosen #{chosen['index']} '{chosen['configuration']}' "
        f"(its own timing {chosen['speedup']:.2f}x "
        f"[{chosen['speedup_low']:.2f}-{chosen['speedup_high']:.2f}], "
        f"retention {chosen['accuracy_retention_percent']:.2f} %); criteria_met={results.get('criteria_met')}"
        + (f" ({results['criteria_reason']})" if results.get("criteria_reason") else "")
    ]
    if any(e[0] == "search_stopped" for e in info["events"]):
        lines.append("search: stopped by its budget")
    for e in info["events"]:
        if e[0] == "step_skipped":
            lines.append(f"search: {e[2]}")
    for c in tried:
        if c.get("latency_ms") is None:
            lines.append(
                f"search candidate #{c['index']} {c['outcome']}: '{c['configuration']}': {c['reason']}"
            )
        else:
            flag = "front" if c["pareto"] else ("below floor" if c["accuracy_retention_percent"] < 99 else "")
            lines.append(
                f"search candidate #{c['index']:<2} {c['configuration'][:70]:<70} "
                f"{c['size_bytes']:>10} B {c['speedup']:>5.2f}x "
                f"{c['accuracy_retention_percent']:>7.2f} % {c.get('seconds', 0):>6.1f} s {flag}"
            )
    return lines


def run_model(name: str, root: Path, args, out: Output) -> None:
    import onnx

    work = root / name
    work.mkdir()
    started = time.perf_counter()
    try:
        with quiet():
            case = BUILDERS[name](work)
    except Exception as exc:
        out(f"{name}: skipped, the model could not be made here: {short(exc)}")
        return
    op_types = {n.op_type for n in onnx.load(str(case.path), load_external_data=False).graph.node}
    out(
        f"{name}: ready in {time.perf_counter() - started:.0f} s; task metric '{case.task}'; "
        + "; ".join(case.notes)
    )

    fp32 = Arm("fp32 original", case.path, 0.0, hand=False)
    arms = [fp32, *hand_arms(case, work, args.batch, op_types)]
    arms.append(Arm("INC autotune", None, 0.0, INC_WHY_NOT, hand=True))
    arms.append(olive_arm(case, work, args.batch))
    search, info = search_arm(case, work, args.batch, args.budget_minutes, args.latency_seconds)
    arms.append(search)
    measured = measure_arms(case, arms, args.batch, args.latency_seconds)

    if case.task == "detection":
        from webapp.engine import metrics

        reference = measured["reference"]
        try:
            found = metrics.detections(reference, metrics.detection_head(reference))
        except Exception as exc:
            out(f"{name}: could not decode the fp32 detections: {short(exc)}")
        else:
            count = sum(len(d[0]) for d in found)
            with_any = sum(1 for d in found if len(d[0]))
            out(f"{name}: fp32 finds {count} detections on {with_any} of {len(found)} images (conf >= 0.25)")

    subsets = [a for a in arms if a.name.startswith("ORT static ") and a.name.endswith(" only")]
    best_subset = max(
        (a for a in subsets if holds(a)),
        key=lambda a: (a.row["speedup"].speedup, -a.row["size"]),
        default=None,
    )
    out(HEADER)
    for arm in arms:
        out(row_text(name, arm, " *" if arm is best_subset else ""))
    kind = measured["baseline"].score_kind
    out(
        f"{name}: metric = {kind} (fp32 score {measured['baseline'].score:.4f}); batch {args.batch}, 1 thread"
    )
    for arm in arms:
        for note in arm.notes:
            out(f"{name}: {arm.name}: {note}")
    for line in search_notes(info):
        out(f"{name}: {line}")
    out(verdict(case, arms, search))
    out(f"{name}: done in {time.perf_counter() - started:.0f} s")
    out()


def engine_version() -> str:
    """The checkout the engine was imported from: its commit, and whether webapp/ had
    uncommitted changes (another person may be editing it while this runs)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "webapp")
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {commit}" + (", with uncommitted changes under webapp/" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo models only, short timings")
    parser.add_argument("--models", help=f"comma-separated, of: {', '.join(ALL_MODELS)}")
    parser.add_argument("--budget-minutes", type=float, default=None, help="the search's budget (10)")
    parser.add_argument("--latency-seconds", type=float, default=None, help="per paired timing (2)")
    parser.add_argument("--batch", type=int, default=8, help="latency and calibration batch")
    parser.add_argument("--output", default="/tmp/bench_search_output.txt")  # noqa: S108
    args = parser.parse_args()
    models = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else ALL_MODELS)
    unknown = [m for m in models if m not in BUILDERS]
    if unknown:
        parser.error(f"unknown models: {', '.join(unknown)}")
    if args.budget_minutes is None:
        args.budget_minutes = 2.0 if args.quick else 10.0
    if args.latency_seconds is None:
        args.latency_seconds = 0.3 if args.quick else 2.0

    import onnxruntime
    import torch

    out = Output(Path(args.output) if args.output else None)
    out(f"engine: {engine_version()}")
    out(
        f"Optideck search vs ORT by hand: models {', '.join(models)}; search budget "
        f"{args.budget_minutes:g} min; {args.latency_seconds:g} s per paired timing; batch {args.batch}; "
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}"
    )
    out(
        "speedup and its interval are paired against the same fp32 session; 'metric' is the task "
        "metric's score; 'retained' its retention (min 99 %)"
    )
    out()
    started = time.perf_counter()
    # ORT's symbolic shape inference leaves scratch files in the working folder.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        for name in models:
            try:
                run_model(name, Path(tmp), args, out)
            except Exception as exc:  # one model's failure costs that model's rows only
                out(f"{name}: the benchmark failed: {short(exc)}")
                out(traceback.format_exc())
    out(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
