"""Benchmark: the demo MLP through the platform versus the same library calls by hand.

    python3 bench/int8_mlp.py [--repeat 3]

Trains the demo MLP on the digits data (as `flask demo` does), then
 1. platform: upload it with its test split and run an int8 dynamic
    quantization session through the real executor (a spawned worker process),
    timed from the session's start to its completion;
 2. direct: in this process, the same library calls the session makes: ONNX
    Runtime sessions, the same latency protocol, quant_pre_process and
    quantize_dynamic, accuracy on the same data.
Prints a table; nothing is asserted. Targets come from the issue.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def direct(model_path: Path, eval_path: Path, workdir: Path, batch: int) -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from webapp.engine import evaluation

    def session(path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def measure(path):
        s = session(path)
        name = s.get_inputs()[0].name
        with np.load(eval_path) as data:
            x, y = data["x"], data["y"]
        accuracy = float((s.run(None, {name: x})[0].argmax(1) == y).mean())
        feed = {name: x[:batch]}
        for _ in range(evaluation.WARMUP_RUNS):
            s.run(None, feed)
        timings = []
        while len(timings) < evaluation.MAX_RUNS:
            t0 = time.perf_counter()
            s.run(None, feed)
            timings.append(time.perf_counter() - t0)
        return accuracy, statistics.median(timings) * 1000

    started = time.perf_counter()
    accuracy_before, latency_before = measure(model_path)
    pre = workdir / "pre.onnx"
    quant_pre_process(str(model_path), str(pre))
    quantized = workdir / "q.onnx"
    quantize_dynamic(str(pre), str(quantized), weight_type=QuantType.QInt8)
    accuracy_after, latency_after = measure(quantized)
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "size_reduction_percent": 100 * (1 - quantized.stat().st_size / model_path.stat().st_size),
        "speedup": latency_before / latency_after,
        "accuracy_retention_percent": 100 * accuracy_after / accuracy_before,
    }


def platform(model_path: Path, eval_path: Path, instance: Path) -> dict:
    from flask_migrate import upgrade

    from webapp import create_app
    from webapp.extensions import db
    from webapp.services import model_store, optimization, users
    from webapp.tables import OptimizationSession

    app = create_app(
        {
            "app": {"instance_dir": str(instance), "secret_key": "bench" * 8},
            "logging": {"level": "WARNING"},
            "executor": {"poll_seconds": 0.05},
        }
    )
    with app.app_context():
        upgrade()
        user = users.find("bench") or users.create("bench", "bench-password-1", "operator")
        with model_path.open("rb") as fh, eval_path.open("rb") as ev:
            model = model_store.add(user, fh, model_path.name, "bench-mlp", ev)
        # A server runs long: its executor has a warm worker waiting. Let it warm.
        app.extensions["optideck.executor"].start()
        time.sleep(3)
        started = time.perf_counter()
        session = optimization.start(
            user, model.id, ["quantization"], {"quantization": {"mode": "int8_dynamic"}}
        )
        while True:
            db.session.expire_all()
            current = db.session.get(OptimizationSession, session.id)
            if current.is_finished:
                break
            time.sleep(0.01)
        wall = time.perf_counter() - started
        app.extensions["optideck.executor"].shutdown()
        r = current.results
        return {
            "wall_s": wall,
            "size_reduction_percent": r["size_reduction_percent"],
            "speedup": r["speedup"],
            "accuracy_retention_percent": r["accuracy_retention_percent"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from webapp.engine import demo_models

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = demo_models.digits(image=False)
        model = demo_models.mlp()
        demo_models.train(model, data)
        files = demo_models.save(model, data.x_test, folder, "mlp")
        eval_path = demo_models.save_eval_data(data, folder / "eval.npz")
        runs = {"platform": [], "direct": []}
        for n in range(args.repeat):
            runs["platform"].append(platform(files["onnx"], eval_path, folder / f"instance{n}"))
            workdir = folder / f"direct{n}"
            workdir.mkdir()
            runs["direct"].append(direct(files["onnx"], eval_path, workdir, 32))

    def med(kind, key):
        return statistics.median(r[key] for r in runs[kind])

    overhead = 100 * (med("platform", "wall_s") / med("direct", "wall_s") - 1)
    rows = [
        ("wall time (s)", f"{med('platform', 'wall_s'):.2f}", f"{med('direct', 'wall_s'):.2f}", ""),
        ("platform overhead", f"{overhead:+.1f} %", "", "< 10 %"),
        (
            "size reduction",
            f"{med('platform', 'size_reduction_percent'):.1f} %",
            f"{med('direct', 'size_reduction_percent'):.1f} %",
            ">= 70 %",
        ),
        (
            "speedup (batch 32, 1 thread)",
            f"{med('platform', 'speedup'):.2f}x",
            f"{med('direct', 'speedup'):.2f}x",
            ">= 1.5x",
        ),
        (
            "accuracy retention",
            f"{med('platform', 'accuracy_retention_percent'):.2f} %",
            f"{med('direct', 'accuracy_retention_percent'):.2f} %",
            ">= 99 %",
        ),
    ]
    print(f"demo MLP (64-1024-1024-10), int8 dynamic, median of {args.repeat} runs")
    print(f"{'metric':<30}{'platform':>12}{'direct':>12}{'target':>10}")
    for name, a, b, target in rows:
        print(f"{name:<30}{a:>12}{b:>12}{target:>10}")


if __name__ == "__main__":
    main()
