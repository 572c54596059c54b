"""The engine on its own: formats, techniques and the runner's rules, on real files."""

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from webapp.engine import formats, screening
from webapp.engine.errors import Cancelled, ModelRejected, TechniqueFailed, TimeLimitExceeded
from webapp.engine.loading import load_onnx
from webapp.engine.runner import SessionJob, run_session
from webapp.engine.techniques.lowrank import compress
from webapp.engine.techniques.pruning import prune

CRITERIA = {
    "threads": 1,
    "latency_batch_size": 32,
    "min_accuracy_retention_percent": 99.0,
    "latency_tolerance_percent": 5.0,
    "rollback_on_violation": True,
    "max_optimization_time_minutes": 30,
}


def test_engine_never_imports_flask():
    code = (
        "import sys, webapp.engine.worker, webapp.engine.runner, webapp.engine.analysis;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'flask', 'sqlalchemy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("onnx", formats.ONNX),
        ("torchscript", formats.TORCHSCRIPT),
        ("exported_program", formats.EXPORTED_PROGRAM),
    ],
)
def test_formats_come_from_content(demo_files, tmp_path, kind, expected):
    renamed = tmp_path / "no-extension"
    shutil.copy(demo_files[kind], renamed)
    assert formats.detect_format(renamed) == expected


def test_pt2_with_a_pickled_weight_is_refused(demo_files, tmp_path):
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(demo_files["exported_program"]) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            target.writestr(info, data)
    with pytest.raises(ModelRejected, match="pickle"):
        screening.check_exported_program(tampered)


def test_pt2_sample_inputs_are_dropped_before_loading(demo_files, tmp_path):
    copy = formats.safe_exported_program_copy(demo_files["exported_program"], tmp_path / "c.pt2")
    with zipfile.ZipFile(copy) as archive:
        samples = [n for n in archive.namelist() if "/data/sample_inputs/" in n]
        assert samples and all(archive.read(n) == b"" for n in samples)


def _weights(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return [numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) == 2]


def test_pruning_reaches_the_target_sparsity(demo_files, tmp_path):
    out = tmp_path / "pruned.onnx"
    info = prune(demo_files["onnx"], out, 0.7)
    zeros = sum(int((w == 0).sum()) for w in _weights(out))
    total = sum(w.size for w in _weights(out))
    assert info["sparsity_reached"] == pytest.approx(zeros / total, abs=1e-3)
    assert info["sparsity_reached"] == pytest.approx(0.7, abs=0.01)


def test_low_rank_really_drops_parameters_and_keeps_outputs_close(demo_files, tmp_path):
    out = tmp_path / "lowrank.onnx"
    info = compress(demo_files["onnx"], out, energy=0.9)
    assert info["parameters_after"] < info["parameters_before"]
    before, after = load_onnx(demo_files["onnx"], 1), load_onnx(out, 1)
    assert after.parameter_count < before.parameter_count
    with np.load(demo_files["eval"]) as data:
        x = data["x"][:64]
    name = before.inputs[0].name
    a, b = before.run({name: x})[0], after.run({after.inputs[0].name: x})[0]
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.9


def test_low_rank_refuses_a_model_without_large_dense_layers(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(TechniqueFailed, match="No fully-connected layer"):
        compress(path, tmp_path / "out.onnx", energy=0.9)


def _job(demo_files, tmp_path, steps, **changes):
    from webapp.engine.analysis import analyse

    spec = analyse(demo_files["onnx"], 1, None, demo_files["eval"])["inputs"]
    values = {
        "session_id": 1,
        "model_path": str(demo_files["onnx"]),
        "model_format": "onnx",
        "input_specs": spec,
        "steps": steps,
        "criteria": CRITERIA,
        "work_dir": str(tmp_path / "work"),
        "eval_data_path": str(demo_files["eval"]),
    }
    return SessionJob(**{**values, **changes})


def test_progress_only_moves_forward_and_ends_at_100(demo_files, tmp_path):
    seen = []
    run_session(
        _job(demo_files, tmp_path, [{"technique": "pruning", "params": {"sparsity": 0.3}}]),
        progress=lambda pct, step: seen.append(pct),
        event=lambda *a: None,
        cancelled=lambda: False,
    )
    assert seen == sorted(seen)
    assert seen[-1] == 100


def test_cancel_is_honoured_inside_a_step(demo_files, tmp_path):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        run_session(
            _job(demo_files, tmp_path, [{"technique": "quantization", "params": {"mode": "int8_dynamic"}}]),
            progress=lambda *a: None,
            event=lambda *a: None,
            cancelled=cancelled,
        )


def test_a_session_past_its_deadline_stops(demo_files, tmp_path):
    job = _job(
        demo_files,
        tmp_path,
        [{"technique": "quantization", "params": {"mode": "int8_dynamic"}}],
        deadline=time.time() - 1,
    )
    with pytest.raises(TimeLimitExceeded):
        run_session(job, progress=lambda *a: None, event=lambda *a: None, cancelled=lambda: False)


def test_int8_static_calibrates_on_the_data(demo_files, tmp_path):
    """The step is kept whatever it measures (no rollback), so its artifact can be read."""
    outcome = run_session(
        _job(
            demo_files,
            tmp_path,
            [{"technique": "quantization", "params": {"mode": "int8_static"}}],
            criteria={**CRITERIA, "rollback_on_violation": False},
        ),
        progress=lambda *a: None,
        event=lambda *a: None,
        cancelled=lambda: False,
    )
    step = outcome.steps[0]
    assert step["details"] == {"mode": "int8_static", "calibration_samples": 256}
    assert step["outcome"] in ("kept", "kept_despite_violation")
    assert step["measurement"]["score_kind"] == "accuracy"
    model = onnx.load(outcome.artifact_path)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_npz_with_objects_is_refused(tmp_path):
    from webapp.engine.datasets import load_npz
    from webapp.engine.errors import DatasetRejected
    from webapp.engine.loading import InputSpec

    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([object(), object()], dtype=object))
    with pytest.raises(DatasetRejected, match="plain numbers"):
        load_npz(path, [InputSpec("input", [None, 64])])


def test_random_bytes_are_not_onnx(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(ModelRejected):
        load_onnx(path, 1)


def test_an_unreached_size_target_means_criteria_not_met(demo_files, tmp_path):
    steps = [{"technique": "pruning", "params": {"sparsity": 0.3}}]
    criteria = {**CRITERIA, "max_size_reduction_percent": 50.0}
    outcome = run_session(
        _job(demo_files, tmp_path, steps, criteria=criteria),
        progress=lambda *a: None,
        event=lambda *a: None,
        cancelled=lambda: False,
    )
    assert outcome.results["size_reduction_percent"] < 50
    assert outcome.results["criteria_met"] is False


# In process here (a session's worker runs it the same way, where warnings are not errors).
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_torchscript_upload_reports_its_onnx_conversion_apart(demo_files, tmp_path):
    from webapp.engine.analysis import analyse

    spec = analyse(demo_files["torchscript"], 1, None, demo_files["eval"])["inputs"]
    job = _job(
        demo_files,
        tmp_path,
        [{"technique": "quantization", "params": {"mode": "int8_dynamic"}}],
        model_path=str(demo_files["torchscript"]),
        model_format="torchscript",
        input_specs=spec,
    )
    results = run_session(
        job, progress=lambda *a: None, event=lambda *a: None, cancelled=lambda: False
    ).results
    assert results["converted_size_bytes"] > results["optimized_size_bytes"]
    assert results["converted_accuracy_retention_percent"] >= 99.0
    assert (
        results["converted_latency_low_ms"]
        <= results["converted_latency_ms"]
        <= results["converted_latency_high_ms"]
    )
    # An ONNX upload has nothing to convert.
    onnx_results = run_session(
        _job(
            demo_files, tmp_path / "onnx", [{"technique": "quantization", "params": {"mode": "int8_dynamic"}}]
        ),
        progress=lambda *a: None,
        event=lambda *a: None,
        cancelled=lambda: False,
    ).results
    assert "converted_size_bytes" not in onnx_results
