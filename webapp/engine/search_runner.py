"""Run a search session: every configuration `search.space` lists, applied to the original,
measured against it, then the trade-off front and the chosen candidate.

Candidates are built from the original (its ONNX export for PyTorch uploads), never from
one another, so a candidate's figures say what its configuration alone does; the second
round combines the first round's winners, and the accuracy-aware fallback retries the int8
static candidate that came closest to the floor with the nodes it must leave in float
(fallback.py).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import fallback, formats, loading, screening, search, timing
from .evaluation import Measurement, first_batch, measure, predict, score
from .outcomes import failure, reduction, retention
from .techniques import MAX_FLOAT_NODES, TECHNIQUES

if TYPE_CHECKING:
    from .runner import SessionOutcome, _Session

CANDIDATE_NAME = "candidate-{index}.onnx"
PROBE_NAME = "fallback-probe.onnx"  # the fallback's measurements, each replacing the last
# Time held back from the session's limit for the report and the trusted side's checks.
RESERVE_S = 30.0


def candidate_name(index: int) -> str:
    return CANDIDATE_NAME.format(index=index)


@dataclass
class _Tried:
    configuration: search.Configuration
    measurement: Measurement
    comparison: timing.Comparison


class Search:
    def __init__(self, session: _Session, original, original_feeds, baseline, data, reference):
        self.session = session
        self.original, self.original_feeds = original, original_feeds
        self.baseline, self.data, self.reference = baseline, data, reference
        self.candidates: list[dict] = []
        self.tried: dict[int, _Tried] = {}
        self.probes = 0  # the fallback's measurements so far
        self.probes_end = float("inf")
        self.probes_cut = False  # whether time ended the fallback's measurements

    def run(self, base_path: Path, base: Measurement, params: dict) -> SessionOutcome:
        from .runner import ARTIFACT_NAME, SessionOutcome

        s = self.session
        started = time.time()
        budget = params.get("budget_minutes")
        self.ends = started + budget * 60 if budget else float("inf")
        if s.job.deadline is not None:
            self.ends = min(self.ends, s.job.deadline - RESERVE_S)
        self.base_path = base_path
        self._add_original(base_path, base)
        import onnx  # the worker's library: the web process imports this module for its names

        graph = onnx.load(str(base_path), load_external_data=False)
        op_types = {node.op_type for node in graph.graph.node}
        allowed = set(s.criteria.get("enabled_techniques", TECHNIQUES)) - set(
            s.criteria.get("forbidden_techniques", ())
        )
        has_data = self.data.source == "dataset"
        first = search.space(allowed, op_types, has_data)
        s._event(
            "search_planned",
            "search",
            f"Searching {len(first)} configurations, then combining the best"
            + (f", within {budget:g} min" if budget else ""),
            {"configurations": [c.words for c in first]},
        )
        stopped = self._explore(first, expected=len(first) + 4)
        if not stopped:
            stopped = self._explore(self._second_round(), expected=len(self.candidates) + 4)
        if not stopped:
            self._explore(self._fallbacks(base_path), expected=len(self.candidates) + 1)
        chosen, why = search.front(self.candidates, s.criteria)
        s.progress(96, "report")
        for candidate in self.candidates:
            index = candidate["index"]
            if not candidate["kept"]:
                (s.work / candidate_name(index)).unlink(missing_ok=True)
        tried = self.tried[chosen]
        artifact = s.work / ARTIFACT_NAME
        shutil.copyfile(s.work / candidate_name(chosen), artifact)
        results = s._results(self.baseline, tried.measurement, self.data, tried.comparison)
        results["candidates"] = self.candidates
        results["chosen"] = chosen
        results["criteria_met"] = results["criteria_met"] and why is None
        if why:
            results["criteria_reason"] = why
        s.progress(100, "done")
        return SessionOutcome(results, str(artifact), [])

    def _add_original(self, base_path: Path, base: Measurement) -> None:
        """Candidate 0: the original as ONNX, timed against the upload (itself, for ONNX)."""
        s = self.session
        shutil.copyfile(base_path, s.work / candidate_name(0))
        if s.job.model_format == formats.ONNX:
            same = timing.Latency(base.latency_ms, base.latency_low_ms, base.latency_high_ms, 0)
            comparison = timing.Comparison(1.0, 1.0, 1.0, same, same, 0)
        else:
            s.phase("inference")
            comparison = timing.compare(
                self.original,
                self.original_feeds,
                s.best_model,
                first_batch(self.data, base.latency_batch),
                s.check,
                s.job.latency_seconds,
            )
        words = "original" if s.job.model_format == formats.ONNX else "original, exported to ONNX"
        record = self._record(search.Configuration([]), base, comparison, words=words)
        s._event(
            "step_completed", "candidate 0", f"{words}: {s._describe(base, None)}", {"candidate": record}
        )

    def _explore(self, configurations: list[search.Configuration], expected: int) -> bool:
        """Try each configuration in turn; True when the budget ran out first."""
        s = self.session
        for configuration in configurations:
            s.check()
            if time.time() > self.ends:
                s._event(
                    "search_stopped",
                    "search",
                    f"The search's time ran out after {len(self.candidates) - 1} candidates; "
                    "choosing among those.",
                    {},
                )
                return True
            done = len(self.candidates) - 1
            s.progress(
                25 + 70 * done / max(expected, done + 1), f"search {done + 1}/{max(expected, done + 1)}"
            )
            self._try(configuration)
        return False

    def _try(self, configuration: search.Configuration) -> None:
        s = self.session
        index = len(self.candidates)
        target = s.work / candidate_name(index)
        s._event("step_started", f"candidate {index}", configuration.words, {"steps": configuration.steps})
        started = time.monotonic()
        try:
            model = self._build(configuration, target)
            s.phase("inference")
            batch = s.batch_for(model)
            comparison = timing.compare(
                self.original,
                self.original_feeds,
                model,
                first_batch(self.data, batch),
                s.check,
                s.job.latency_seconds,
            )
            measurement, _ = measure(
                target,
                model,
                self.data,
                batch,
                self.reference,
                s.check,
                True,
                timed=comparison.candidate,
                task=s.job.task,
            )
        except Exception as exc:
            outcome, reason = failure(exc)
            target.unlink(missing_ok=True)
            self.candidates.append(
                {
                    "index": index,
                    "configuration": configuration.words,
                    "steps": configuration.steps,
                    "outcome": outcome,
                    "reason": reason,
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
            s._event("step_rolled_back", f"candidate {index}", f"{configuration.words}: {reason}", {})
            return
        record = self._record(configuration, measurement, comparison)
        record["seconds"] = round(time.monotonic() - started, 1)
        best = max(
            (c for c in self.candidates if c.get("latency_ms") is not None),
            key=lambda c: search.weighted_score(c, s.criteria),
        )
        s._event(
            "step_completed",
            f"candidate {index}",
            f"{configuration.words}: {s._describe(measurement, self.baseline, comparison)}; "
            f"best so far #{best['index']} {best['configuration']}",
            {"candidate": record},
        )

    def _build(self, configuration: search.Configuration, target: Path) -> loading.LoadedModel:
        """`configuration`'s steps applied to the original into `target`, checked as the
        trusted side will check it, and loaded; the files between steps are removed."""
        s = self.session
        s.phase("transform")
        steps = configuration.steps
        between = [s.work / f"{target.stem}-{number}.onnx" for number in range(len(steps) - 1)]
        source = self.base_path
        try:
            for step, out in zip(steps, [*between, target], strict=True):
                TECHNIQUES[step["technique"]].apply(
                    source, out, step["params"], self.data, self.baseline.latency_batch, s.check
                )
                s.check()
                source = out
        finally:
            for path in between:
                path.unlink(missing_ok=True)
        screening.check_output(target)
        return loading.run_onnx(target, s.threads)

    def _record(
        self,
        configuration: search.Configuration,
        m: Measurement,
        comparison: timing.Comparison,
        words: str | None = None,
    ) -> dict:
        index = len(self.candidates)
        self.tried[index] = _Tried(configuration, m, comparison)
        record = {
            "index": index,
            "configuration": words or configuration.words,
            "steps": configuration.steps,
            "outcome": "measured",
            "size_bytes": m.size_bytes,
            "compressed_size_bytes": m.compressed_size_bytes,
            "size_reduction_percent": round(reduction(self.baseline.size_bytes, m.size_bytes), 2),
            "latency_ms": comparison.candidate.median_ms,
            "latency_low_ms": comparison.candidate.low_ms,
            "latency_high_ms": comparison.candidate.high_ms,
            "speedup": round(comparison.speedup, 3),
            "speedup_low": round(comparison.low, 3),
            "speedup_high": round(comparison.high, 3),
            "score": round(m.score, 6),
            "accuracy_retention_percent": round(retention(self.baseline, m), 2),
        }
        self.candidates.append(record)
        return record

    def _holds(self, candidate: dict) -> bool:
        """Measured, and at or above the accuracy floor."""
        minimum = float(self.session.criteria.get("min_accuracy_retention_percent", 99.0))
        return candidate.get("latency_ms") is not None and candidate["accuracy_retention_percent"] >= minimum

    def _measured(self) -> list[dict]:
        return [c for c in self.candidates[1:] if self._holds(c)]

    def _second_round(self) -> list[search.Configuration]:
        """The smallest low-rank candidate above the floor with each of the two best
        quantizations above it: factorizing and quantizing compound."""
        criteria = self.session.criteria
        good = self._measured()
        by_technique = {
            t: [c for c in good if [step["technique"] for step in c["steps"]] == [t]]
            for t in ("compression", "pruning", "quantization")
        }
        quantized = sorted(by_technique["quantization"], key=lambda c: -search.weighted_score(c, criteria))[
            :2
        ]
        found = []
        for technique in ("compression", "pruning"):
            if not by_technique[technique]:
                continue
            best = max(by_technique[technique], key=lambda c: c["size_reduction_percent"])
            for q in quantized:
                found.append(
                    search.combined(
                        self.tried[best["index"]].configuration, self.tried[q["index"]].configuration
                    )
                )
        return found

    def _fallbacks(self, base_path: Path) -> list[search.Configuration]:
        """The int8 static candidate that came closest to the floor without holding it, with
        the nodes fallback.float_nodes finds it must leave in float. Closest, not the full
        graph: on a detector the damage is mostly in the non-Conv operators, so Conv-only
        int8 comes near and a few convolutions are what is left to spare."""
        from .techniques.quantization import quantized_nodes  # onnx: the worker's, see run()

        static = [
            c
            for c in self.candidates
            if c.get("latency_ms") is not None
            and len(c["steps"]) == 1
            and c["steps"][0]["params"].get("mode") == "int8_static"
            and not c["steps"][0]["params"].get("exclude_nodes")
        ]
        if not static or any(self._holds(c) for c in static):
            return []
        closest = max(static, key=lambda c: (c["accuracy_retention_percent"], -c["index"]))
        configuration = self.tried[closest["index"]].configuration
        s = self.session
        s.phase("transform")
        floor = float(s.criteria.get("min_accuracy_retention_percent", 99.0))
        # Probing stops while the candidate it leads to can still be measured in time: it
        # should cost about what the closest candidate did.
        self.probes_end = self.ends - closest["seconds"]
        try:
            nodes = quantized_nodes(base_path, s.work, configuration.steps[0]["params"])
            found = fallback.float_nodes(
                nodes, lambda float_nodes: self._retention_with(configuration, float_nodes), floor
            )
        except Exception as exc:
            _, reason = failure(exc)
            s._event("step_skipped", "search", f"The accuracy-aware fallback failed: {reason}", {})
            return []
        finally:
            (s.work / PROBE_NAME).unlink(missing_ok=True)
        if found is None:
            s._event(
                "step_skipped",
                "search",
                f"The accuracy-aware fallback found no nodes of #{closest['index']} to leave in float "
                f"that hold {floor:g} % in the time left.",
                {},
            )
            return []
        if self.probes_cut:
            s._event(
                "search_probe",
                "search",
                f"No time left for more measurements: the smallest set that held, {len(found)} "
                f"node{'s' if len(found) > 1 else ''} in float, is measured as a candidate.",
                {"float_nodes": len(found)},
            )
        if len(found) > MAX_FLOAT_NODES:
            s._event(
                "step_skipped",
                "search",
                f"The accuracy-aware fallback needs {len(found)} nodes of #{closest['index']} in float "
                f"to hold {floor:g} %; a candidate may leave at most {MAX_FLOAT_NODES}.",
                {},
            )
            return []
        return [search.with_float_nodes(configuration, found)]

    def _retention_with(self, configuration: search.Configuration, nodes: list[str]) -> float | None:
        """The accuracy retention of `configuration` with `nodes` in float, measured on the
        evaluation data but not timed (the fallback's probe); None once the time is up."""
        s = self.session
        s.check()
        if time.time() > self.probes_end:
            self.probes_cut = True
            return None
        self.probes += 1
        # A step of its own for the executor's watchdog: together the probes may take far
        # longer than one step may.
        done = len(self.candidates) - 1
        s.progress(25 + 70 * done / (done + 1), f"search fallback, measurement {self.probes}")
        probe = search.with_float_nodes(configuration, nodes)
        model = self._build(probe, s.work / PROBE_NAME)
        s.phase("inference")
        outputs = predict(model, self.data, s.batch_for(model), s.check, s.job.task)
        value, kind, _ = score(outputs, self.data, self.reference, s.job.task)
        kept = round(retention(self.baseline, replace(self.baseline, score=value, score_kind=kind)), 2)
        s._event(
            "search_probe",
            "search",
            f"{probe.words}: accuracy retention {kept:.2f} % (not timed)",
            {"float_nodes": len(nodes), "accuracy_retention_percent": kept},
        )
        return kept
