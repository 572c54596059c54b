"""int8 static calibration holds every batch's tensors until it ends (ONNX Runtime's
calibrators): it stops taking batches once it has used half the memory the process had
left, and says so, instead of running the worker out of memory."""

from __future__ import annotations

import numpy as np

from tests.helpers import tiny_onnx_model
from webapp.engine.datasets import EvalData
from webapp.engine.techniques import quantization

STATIC = {"mode": "int8_static"}


def _data(count=96):
    x = np.random.default_rng(0).normal(size=(count, 4)).astype(np.float32)
    return EvalData({"x": x}, None, "dataset")


def test_with_memory_to_spare_every_calibration_sample_is_used(tmp_path):
    src = tiny_onnx_model(tmp_path / "m.onnx")
    details = quantization.quantize(src, tmp_path / "q.onnx", STATIC, _data(), 8, lambda: None)
    assert details["calibration_samples"] == 96
    assert "calibration_note" not in details


def test_calibration_stops_at_half_the_memory_left_and_says_so(tmp_path, monkeypatch):
    """The memory readings are the edge replaced here: 4 GB available, 1 GB resident at the
    start, and 1 GB more at every reading (one before each batch after the first)."""
    import resource

    gigabyte = 1 << 30
    readings = iter(range(100))
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    monkeypatch.setattr(resource, "getrlimit", lambda which: unlimited)
    monkeypatch.setattr(quantization, "_available_memory", lambda resident: 4 * gigabyte)
    monkeypatch.setattr(quantization, "_memory", lambda: (0, gigabyte * (1 + next(readings))))
    src = tiny_onnx_model(tmp_path / "m.onnx")
    details = quantization.quantize(src, tmp_path / "q.onnx", STATIC, _data(), 8, lambda: None)
    # The mark is at 3 GB (half of the 4 GB left): the reading before the fourth batch is 4 GB.
    assert details["calibration_samples"] == 24
    assert "stopped early" in details["calibration_note"]
    assert (tmp_path / "q.onnx").stat().st_size > 0


def test_the_guard_reads_the_address_space_against_its_limit(monkeypatch):
    import resource

    gigabyte = 1 << 30
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4 * gigabyte, 4 * gigabyte))
    used = [2 * gigabyte]
    monkeypatch.setattr(quantization, "_memory", lambda: (used[0], 0))
    exhausted = quantization.memory_guard()
    assert exhausted is not None and not exhausted()
    used[0] = 3 * gigabyte  # the mark: half of the 2 GB left
    assert not exhausted()
    used[0] += 1
    assert exhausted()


def test_what_is_available_is_read_from_the_kernel():
    import os

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < quantization._available_memory(0) <= physical
