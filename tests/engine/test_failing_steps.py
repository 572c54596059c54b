"""A step that crashes costs that step, not the session: it is recorded as failed and rolled
back with its reason, and the session goes on from the last kept model."""

from __future__ import annotations

import shutil

import onnx
import pytest
from marshmallow import Schema

from tests.helpers import TINY_INPUTS, tiny_onnx_model
from webapp.engine.errors import TimeLimitExceeded
from webapp.engine.runner import SessionJob, run_session
from webapp.engine.techniques import TECHNIQUES, Technique, register

CRITERIA = {
    "threads": 1,
    "latency_batch_size": 4,
    "min_accuracy_retention_percent": 99.0,
    "latency_tolerance_percent": 1000.0,  # a toy model's timings are noise
    "rollback_on_violation": True,
}


def _crash(src, dst, params, data, batch, check):
    raise RuntimeError(f"[ONNXRuntimeError] cannot handle {src} (opset 11)")


def _garbage(src, dst, params, data, batch, check):
    dst.write_bytes(b"not a protobuf at all")  # the library "succeeded"; its file does not load
    return {}


def _copy(src, dst, params, data, batch, check):
    shutil.copyfile(src, dst)
    return {}


def _over_time(src, dst, params, data, batch, check):
    raise TimeLimitExceeded("The session ran past its time limit (1 min).")


def _out_of_memory(src, dst, params, data, batch, check):
    raise RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer")


@pytest.fixture
def techniques():
    made = {
        name: register(Technique(name, name.title(), "a test's own", 4, Schema, apply, lambda p: 0.0))
        for name, apply in [
            ("crash", _crash),
            ("garbage", _garbage),
            ("copy", _copy),
            ("over", _over_time),
            ("oom", _out_of_memory),
        ]
    }
    yield made
    for name in made:
        del TECHNIQUES[name]


def _run(tmp_path, *names):
    job = SessionJob(
        1,
        str(tiny_onnx_model(tmp_path / "m.onnx")),
        "onnx",
        TINY_INPUTS,
        [{"technique": name, "params": {}} for name in names],
        CRITERIA,
        str(tmp_path / "work"),
        latency_seconds=0.2,
    )
    events = []
    outcome = run_session(job, lambda *a: None, lambda *a: events.append(a), lambda: False)
    return outcome, events


def test_a_crashing_step_is_rolled_back_and_the_session_goes_on(techniques, tmp_path):
    outcome, events = _run(tmp_path, "copy", "crash", "garbage", "copy")
    assert [step["outcome"] for step in outcome.steps] == ["kept", "failed", "failed", "kept"]
    crashed, garbage = outcome.steps[1], outcome.steps[2]
    # It was handed the last kept model, and its reason keeps the cause, without the path.
    assert crashed["reason"] == "RuntimeError: [ONNXRuntimeError] cannot handle step1_copy.onnx (opset 11)"
    # Checked as the trusted side will check it, before ONNX Runtime loads it.
    assert garbage["reason"].startswith("ModelRejected: it is not a valid ONNX model")
    assert "Wire format was corrupt" in garbage["reason"]
    rolled_back = [e for e in events if e[0] == "step_rolled_back"]
    assert [e[1] for e in rolled_back] == ["crash", "garbage"]
    assert rolled_back[0][2].startswith("Failed, rolled back: RuntimeError")
    # No candidate of a failed step is left behind, and the artifact is a model.
    assert sorted(p.name for p in (tmp_path / "work").glob("step*")) == ["step1_copy.onnx", "step4_copy.onnx"]
    onnx.checker.check_model(onnx.load(outcome.artifact_path))
    assert outcome.results["accuracy_retention_percent"] == pytest.approx(100.0)
    # Each kept step was timed against the model it would replace, the result against the
    # upload: paired rounds, each figure with its interval.
    assert outcome.steps[0]["against_kept"]["rounds"] >= 15
    results = outcome.results
    assert results["speedup_low"] <= results["speedup"] <= results["speedup_high"]
    for which in ("original", "optimized"):
        assert results[f"{which}_latency_low_ms"] <= results[f"{which}_latency_ms"]
        assert results[f"{which}_latency_ms"] <= results[f"{which}_latency_high_ms"]
    assert results["latency_rounds"] >= 15


def test_running_out_of_time_still_ends_the_session(techniques, tmp_path):
    with pytest.raises(TimeLimitExceeded):
        _run(tmp_path, "copy", "over", "copy")


def test_a_step_that_runs_out_of_memory_is_rolled_back_and_the_session_goes_on(techniques, tmp_path):
    """An allocation refused at the sandbox's cap costs its step: the kept steps before it
    are not lost (a search's candidates, say: tests/engine/test_search.py)."""
    outcome, _ = _run(tmp_path, "copy", "oom", "copy")
    assert [step["outcome"] for step in outcome.steps] == ["kept", "failed", "kept"]
    assert outcome.steps[1]["reason"].startswith("Out of memory: this step needed more than the sandbox")
    assert "Failed to allocate" in outcome.steps[1]["reason"]


def test_running_out_of_memory_outside_a_step_fails_as_resource_limit():
    from webapp.engine.worker import _failure

    kind, message = _failure(MemoryError(), {"memory_mb": 2048})
    assert kind == "resource_limit" and "2048 MB" in message


def test_a_long_library_error_keeps_its_cause():
    from webapp.engine.errors import MESSAGE_LIMIT, public_message

    text = "Exporting failed in /tmp/sandbox/job/m.pt:\n" + "frame\n" * 400 + "Caused by: int argument n"
    message = public_message(RuntimeError(text))
    assert len(message) <= MESSAGE_LIMIT
    assert message.startswith("Exporting failed in m.pt:") and message.endswith("Caused by: int argument n")


def test_a_model_that_fails_on_its_data_at_the_sessions_batch_is_the_models_fault(tmp_path):
    """Uploads are analysed one sample at a time; this model reshapes every batch to one
    sample, so it runs there and fails at the session's batch of 4. ONNX Runtime's refusal
    is the model's, reported as such, not as the server's internal error."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from webapp.engine.errors import ModelRejected

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "one"], ["y"])],
        "one_sample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([1, 4], np.int64), "one")],
    )
    model = tmp_path / "one.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    job = SessionJob(
        1,
        str(model),
        "onnx",
        [{"name": "x", "shape": [None, 4], "dtype": "float32"}],
        [{"technique": "quantization", "params": {"mode": "fp16"}}],
        CRITERIA,
        str(tmp_path / "work"),
        latency_seconds=0.05,
    )
    with pytest.raises(ModelRejected, match="fails on its evaluation data at batch 4"):
        run_session(job, lambda *a: None, lambda *a: None, lambda: False)
