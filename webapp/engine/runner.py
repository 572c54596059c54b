"""Run one optimization session: baseline, export, each step measured, kept or rolled back."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import formats, loading, metrics, screening, search, timing
from .datasets import EvalData, generate, load_npz
from .errors import (
    Cancelled,
    EngineError,
    ModelRejected,
    TechniqueFailed,
    TimeLimitExceeded,
    out_of_memory,
    public_message,
)
from .evaluation import Measurement, first_batch, measure
from .loading import InputSpec, LoadedModel
from .outcomes import failure, reduction, retention
from .search_runner import Search
from .techniques import TECHNIQUES
from .techniques.export import to_onnx

Progress = Callable[[float, str], None]
Event = Callable[[str, str, str, dict], None]
# What the worker does next, for the parent's watchdog: "inference" (runs of the model,
# each bounded on its own) or "transform" (loading, exporting, a technique's library call).
Phase = Callable[[str], None]
ARTIFACT_NAME = "optimized.onnx"


@dataclass
class SessionJob:
    """Everything a worker needs, as plain data (it crosses a process boundary)."""

    session_id: int
    model_path: str
    model_format: str
    input_specs: list[dict]
    steps: list[dict]  # [{"technique": id, "params": {...}}] in plan order
    criteria: dict
    work_dir: str
    eval_data_path: str | None = None
    deadline: float | None = None  # time.time() after which the session stops
    max_unpacked_bytes: int = 2 << 30  # what the evaluation arrays may unpack to
    latency_seconds: float = timing.BUDGET_S  # how long each latency measurement times
    task: str = "auto"  # the task metric the model's owner chose (metrics.TASKS)


@dataclass
class SessionOutcome:
    results: dict
    artifact_path: str
    steps: list[dict] = field(default_factory=list)


class _Session:
    def __init__(
        self, job: SessionJob, progress: Progress, event: Event, cancelled: Callable[[], bool], phase: Phase
    ):
        self.job = job
        self.criteria = job.criteria
        self.work = Path(job.work_dir)
        self.threads = int(self.criteria.get("threads", 1))
        self.batch_wanted = int(self.criteria.get("latency_batch_size", 32))
        # Compressed sizes tell what pruning's zeros are worth; other plans skip the cost.
        self.compressed = any(step["technique"] in ("pruning", search.AUTO) for step in job.steps)
        self._progress, self._event, self._cancelled = progress, event, cancelled
        self.phase = phase
        self._pct = 0.0
        # The model the next step is compared with: the upload, its ONNX export, or the
        # last kept step's, loaded once.
        self.best_model: LoadedModel
        # A PyTorch upload's ONNX export, measured: the conversion's own effect, reported
        # apart from the optimization's.
        self.converted: Measurement | None = None

    def check(self) -> None:
        if self._cancelled():
            raise Cancelled()
        if self.job.deadline is not None and time.time() > self.job.deadline:
            raise TimeLimitExceeded(
                "The session ran past its time limit "
                f"({self.criteria.get('max_optimization_time_minutes')} min)."
            )

    def progress(self, pct: float, step: str) -> None:
        self._pct = max(self._pct, min(pct, 100.0))
        self._progress(round(self._pct, 1), step)

    def batch_for(self, model: LoadedModel) -> int:
        return model.inputs[0].fixed_batch or self.batch_wanted

    def run(self) -> SessionOutcome:
        job = self.job
        self.work.mkdir(parents=True, exist_ok=True)
        specs = [InputSpec.from_dict(s) for s in job.input_specs]
        self.progress(1, "analysis")
        self.phase("transform")
        # The upload was checked and inspected when it was analysed.
        original = loading.load(
            Path(job.model_path),
            job.model_format,
            self.threads,
            specs,
            inspect=False,
            max_unpacked_bytes=job.max_unpacked_bytes,
        )
        if job.model_format == formats.ONNX:
            original.inputs = specs
        # A TorchScript model names its inputs after forward()'s arguments, whatever an
        # older analysis stored.
        data = (
            load_npz(Path(job.eval_data_path), original.inputs, job.max_unpacked_bytes)
            if job.eval_data_path
            else generate(original.inputs)
        )
        self.check()
        self.progress(5, "baseline")
        self.phase("inference")
        batch = self.batch_for(original)
        try:
            baseline, reference = measure(
                Path(job.model_path),
                original,
                data,
                batch,
                None,
                self.check,
                self.compressed,
                budget_s=job.latency_seconds,
                task=self.job.task,
            )
        except (EngineError, Cancelled):
            raise
        except Exception as exc:
            if out_of_memory(exc):
                raise  # the worker reports resource_limit
            # The upload was analysed one sample at a time: a model that fails on its own
            # data at the session's batch (a tensor past ONNX Runtime's 4 GB, say) is the
            # model's fault, not the server's.
            raise ModelRejected(
                f"The model fails on its evaluation data at batch {batch}: {public_message(exc)}"
            ) from exc
        self._event(
            "baseline",
            "baseline",
            self._describe(baseline, None),
            {"measurement": baseline.as_dict(), "inputs": data.source},
        )
        self.progress(15, "baseline")

        original_feeds = first_batch(data, baseline.latency_batch)
        best_path, best, self.best_model = Path(job.model_path), baseline, original
        if job.model_format != formats.ONNX:
            best_path, best, data = self._export(original, data, reference, baseline)
        if job.steps and job.steps[0]["technique"] == search.AUTO:
            return Search(self, original, original_feeds, baseline, data, reference).run(
                best_path, best, job.steps[0]["params"]
            )
        steps = []
        span = (95 - 25) / max(len(job.steps), 1)
        for index, step in enumerate(job.steps):
            start = 25 + index * span
            kept, info, measurement = self._step(
                step, best_path, best, baseline, data, reference, start, span, index
            )
            steps.append(info)
            if kept:
                best_path, best = kept, measurement
        self.progress(96, "report")
        # The delivered model against the upload, timed side by side: the report's speed.
        final = None
        if best_path != Path(job.model_path):
            self.phase("inference")
            final = timing.compare(
                original,
                original_feeds,
                self.best_model,
                first_batch(data, best.latency_batch),
                self.check,
                job.latency_seconds,
            )
        self.progress(98, "report")
        artifact = self.work / ARTIFACT_NAME
        if best_path != artifact:
            shutil.copyfile(best_path, artifact)
        results = self._results(baseline, best, data, final)
        self.progress(100, "done")
        return SessionOutcome(results, str(artifact), steps)

    def _export(self, original, data, reference, baseline):
        self.progress(16, "export_onnx")
        self._event("step_started", "export_onnx", "Exporting to ONNX", {})
        target = self.work / "exported.onnx"
        self.phase("transform")
        info = to_onnx(original, target, data.take(0, 1))
        self.check()
        try:
            screening.check_output(target)
        except ModelRejected as exc:
            raise TechniqueFailed(
                f"The ONNX export is not a file Optideck can deliver: {exc.message}"
            ) from exc
        exported = loading.run_onnx(target, self.threads)
        self.phase("inference")
        data = _exported_data(data, [spec.name for spec in exported.inputs])
        measurement, _ = measure(
            target,
            exported,
            data,
            self.batch_for(exported),
            reference,
            self.check,
            self.compressed,
            budget_s=self.job.latency_seconds,
            task=self.job.task,
        )
        retained = retention(baseline, measurement)
        if retained < 99.0:
            raise TechniqueFailed(
                f"The ONNX export changed the model's outputs "
                f"(retention {retained:.1f} %); the session stops here."
            )
        self._event(
            "step_completed",
            "export_onnx",
            self._describe(measurement, baseline),
            {"measurement": measurement.as_dict(), **info},
        )
        self.progress(25, "export_onnx")
        self.best_model, self.converted = exported, measurement
        return target, measurement, data

    def _step(self, step, best_path, best, baseline, data, reference, start, span, index):
        technique = TECHNIQUES[step["technique"]]
        name = step["technique"]
        self.progress(start, name)
        self._event("step_started", name, f"{technique.label}: {search.describe(step)}", {})
        candidate = self.work / f"step{index + 1}_{name}.onnx"
        self.phase("transform")
        try:
            details = technique.apply(
                best_path, candidate, step["params"], data, best.latency_batch, self.check
            )
            self.check()
            screening.check_output(candidate)
            self.progress(start + span * 0.6, name)
            model = loading.run_onnx(candidate, self.threads)
            self.phase("inference")
            batch = self.batch_for(model)
            comparison = timing.compare(
                self.best_model,
                first_batch(data, best.latency_batch),
                model,
                first_batch(data, batch),
                self.check,
                self.job.latency_seconds,
            )
            measurement, _ = measure(
                candidate,
                model,
                data,
                batch,
                reference,
                self.check,
                self.compressed,
                timed=comparison.candidate,
                task=self.job.task,
            )
        except Exception as exc:
            outcome, reason = failure(exc)
            candidate.unlink(missing_ok=True)
            if outcome == "skipped":
                self._event("step_skipped", name, reason, {"params": step["params"]})
                return None, {"technique": name, "outcome": "skipped", "reason": reason}, None
            self._event(
                "step_rolled_back", name, f"Failed, rolled back: {reason}", {"params": step["params"]}
            )
            failed = {"technique": name, "params": step["params"], "outcome": "failed", "reason": reason}
            return None, failed, None
        self.progress(start + span, name)
        reason = self._violation(baseline, measurement, comparison)
        info = {
            "technique": name,
            "params": step["params"],
            "details": details,
            "measurement": measurement.as_dict(),
            "against_kept": comparison.as_dict(),
        }
        if reason and self.criteria.get("rollback_on_violation", True):
            candidate.unlink(missing_ok=True)
            self._event("step_rolled_back", name, f"Rolled back: {reason}", info)
            return None, {**info, "outcome": "rolled_back", "reason": reason}, None
        outcome = "kept_despite_violation" if reason else "kept"
        self._event("step_completed", name, self._describe(measurement, best, comparison), info)
        self.best_model = model
        return candidate, {**info, "outcome": outcome, "reason": reason}, measurement

    def _violation(self, baseline: Measurement, candidate: Measurement, comparison: timing.Comparison):
        minimum = float(self.criteria.get("min_accuracy_retention_percent", 99.0))
        retained = retention(baseline, candidate)
        if retained < minimum:
            return f"accuracy retention {retained:.2f} % is below the minimum {minimum:g} %"
        tolerance = float(self.criteria.get("latency_tolerance_percent", 5.0))
        if comparison.slower_than(tolerance):
            return (
                f"slower than the kept model: {comparison.speedup:.2f}x speed "
                f"({comparison.low:.2f}–{comparison.high:.2f}x in {comparison.rounds} paired rounds), "
                f"beyond the {tolerance:g} % tolerance"
            )
        return None

    def _describe(
        self, m: Measurement, before: Measurement | None, comparison: timing.Comparison | None = None
    ) -> str:
        text = (
            f"{m.size_bytes / 1e6:.2f} MB, {m.latency_ms:.3f} ms ({m.latency_low_ms:.3f}–"
            f"{m.latency_high_ms:.3f}) per batch of {m.latency_batch}, "
            f"{m.score_kind.replace('_', ' ')} {m.score * 100:.2f} %"
        )
        if before is not None:
            text += f" ({reduction(before.size_bytes, m.size_bytes):.1f} % smaller"
            if comparison is not None:
                text += f", {comparison.speedup:.2f}x speed ({comparison.low:.2f}–{comparison.high:.2f})"
            text += ")"
        return text

    def _results(
        self, baseline: Measurement, best: Measurement, data: EvalData, final: timing.Comparison | None
    ) -> dict:
        if final is None:  # nothing changed: the model against itself
            same = timing.Latency(baseline.latency_ms, baseline.latency_low_ms, baseline.latency_high_ms, 0)
            final = timing.Comparison(1.0, 1.0, 1.0, same, same, 0)
        retained = retention(baseline, best)
        max_ms = float(self.criteria.get("max_inference_time_ms", 0) or 0)
        minimum = float(self.criteria.get("min_accuracy_retention_percent", 99.0))
        size_target = float(self.criteria.get("max_size_reduction_percent", 0) or 0)
        smaller = reduction(baseline.size_bytes, best.size_bytes)
        met = (
            retained >= minimum
            and (max_ms <= 0 or final.candidate.median_ms <= max_ms)
            and (size_target <= 0 or smaller >= size_target)
        )
        return {
            "original_size_bytes": baseline.size_bytes,
            "optimized_size_bytes": best.size_bytes,
            "original_compressed_size_bytes": baseline.compressed_size_bytes,
            "optimized_compressed_size_bytes": best.compressed_size_bytes,
            "original_latency_ms": final.reference.median_ms,
            "original_latency_low_ms": final.reference.low_ms,
            "original_latency_high_ms": final.reference.high_ms,
            "optimized_latency_ms": final.candidate.median_ms,
            "optimized_latency_low_ms": final.candidate.low_ms,
            "optimized_latency_high_ms": final.candidate.high_ms,
            "latency_rounds": final.rounds,
            "latency_batch_size": best.latency_batch,
            "accuracy_before": round(baseline.score, 6),
            "accuracy_after": round(best.score, 6),
            "accuracy_kind": best.score_kind,
            "evaluation_inputs": data.source,
            "size_reduction_percent": round(smaller, 2),
            "speed_improvement_percent": round((final.speedup - 1) * 100, 2),
            "speedup": round(final.speedup, 3),
            "speedup_low": round(final.low, 3),
            "speedup_high": round(final.high, 3),
            "accuracy_retention_percent": round(retained, 2),
            "criteria_met": met,
            **metrics.detection_basis(baseline.outputs),
            **self._conversion(baseline),
        }

    def _conversion(self, baseline: Measurement) -> dict:
        if self.converted is None:
            return {}
        c = self.converted
        return {
            "converted_size_bytes": c.size_bytes,
            "converted_latency_ms": c.latency_ms,
            "converted_latency_low_ms": c.latency_low_ms,
            "converted_latency_high_ms": c.latency_high_ms,
            "converted_accuracy_retention_percent": round(retention(baseline, c), 2),
        }


def _exported_data(data: EvalData, names: list[str]) -> EvalData:
    """The data for an ONNX export's inputs: by name where it kept the names (TorchScript's
    exporter does, and drops an input that is never read), else by position (torch.export's
    may rename them)."""
    if set(names) <= set(data.inputs):
        return data.select(names)
    if len(names) != len(data.inputs):
        raise TechniqueFailed(
            f"The ONNX export takes {len(names)} inputs where the model takes {len(data.inputs)}; "
            "the session stops here."
        )
    return data.renamed(names)


def warm_up() -> None:
    """Load what every session needs before a session waits for it: the
    libraries, and ONNX Runtime's one-time set-up, primed with a tiny model."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import onnxruntime.quantization  # noqa: F401
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "warm-up",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        helper.make_model(graph).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    session.run(None, {"x": np.ones((1, 2), dtype=np.float32)})


def run_session(
    job: SessionJob,
    progress: Progress,
    event: Event,
    cancelled: Callable[[], bool],
    phase: Phase = lambda name: None,
) -> SessionOutcome:
    """Run `job`; raises Cancelled, TimeLimitExceeded or another EngineError to stop."""
    return _Session(job, progress, event, cancelled, phase).run()
