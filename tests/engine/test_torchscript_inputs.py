"""TorchScript models whose forward() takes several tensors and plain numbers (a sample
rate, a gain, a flag): their inputs come from forward()'s own signature, shaped by the
evaluation .npz or input_shape, and the numbers survive the export to ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from webapp.engine import analysis
from webapp.engine.errors import DatasetRejected, ModelRejected
from webapp.engine.runner import SessionJob, run_session
from webapp.engine.screening import check_output

RNG = np.random.default_rng(7)
# Scripting is how such files are made (tracing would bake the numbers in); torch 2.13
# marks it deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


class Mixer(torch.nn.Module):
    """Two tensors and three numbers; `sr` picks the branch, so a wrong value shows."""

    def __init__(self):
        super().__init__()
        self.audio = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, audio: torch.Tensor, context: torch.Tensor, sr: int, gain: float, loud: bool = False):
        hidden = torch.relu(self.audio(audio)) * gain + context
        if sr == 16000:
            hidden = hidden * 2.0
        if loud:
            hidden = hidden + 1.0
        return self.head(hidden)


class Listed(torch.nn.Module):
    def forward(self, parts: list[torch.Tensor]):
        return parts[0]


@pytest.fixture(scope="module")
def mixer(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ts") / "mixer.pt"
    torch.jit.script(Mixer().eval()).save(str(path))
    return path


def _data(path, **extra):
    arrays = {
        "audio": RNG.standard_normal((24, 16)).astype(np.float32),
        "context": RNG.standard_normal((24, 32)).astype(np.float32),
        "sr": np.array(16000),
        "gain": np.array(0.5),
        "loud": np.array(True),
        **extra,
    }
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_forward_s_numbers_become_inputs_of_their_own_type(mixer, tmp_path):
    found = analysis.analyse(mixer, 1, eval_path=_data(tmp_path / "d.npz"), latency_seconds=0.05)
    assert found["inputs"] == [
        {"name": "audio", "shape": [None, 16], "dtype": "float32"},
        {"name": "context", "shape": [None, 32], "dtype": "float32"},
        {"name": "sr", "shape": [], "dtype": "int64"},
        {"name": "gain", "shape": [], "dtype": "float64"},
        {"name": "loud", "shape": [], "dtype": "bool"},
    ]
    assert found["eval_data"] == {"samples": 24, "labels": False}


def test_every_number_argument_needs_its_value_even_with_a_default(mixer, tmp_path):
    with pytest.raises(DatasetRejected, match="missing: 'loud'"):
        analysis.analyse(mixer, 1, eval_path=_data(tmp_path / "d.npz", loud=None), latency_seconds=0.05)


def test_a_model_with_number_arguments_is_exported_and_optimized_with_their_values(mixer, tmp_path):
    data = _data(tmp_path / "d.npz")
    found = analysis.analyse(mixer, 1, eval_path=data, latency_seconds=0.05)
    job = SessionJob(
        1,
        str(mixer),
        "torchscript",
        found["inputs"],
        [{"technique": "quantization", "params": {"mode": "int8_dynamic"}}],
        {"threads": 1, "latency_batch_size": 8, "min_accuracy_retention_percent": 90.0},
        str(tmp_path / "work"),
        eval_data_path=str(data),
        latency_seconds=0.05,
    )
    events = []
    outcome = run_session(job, lambda *a: None, lambda *a: events.append(a), lambda: False)
    # The export is checked against the TorchScript model's own outputs: with sr or gain
    # lost on the way, the branch or the scale would differ and the session would stop.
    assert outcome.results["converted_accuracy_retention_percent"] == pytest.approx(100.0, abs=0.01)
    # sr's branch is an If: ORT's quantizer left it before the node its branch reads, and
    # the file was refused at the end; it is put in order, so the step is measured.
    assert [s["outcome"] for s in outcome.steps] in (["kept"], ["rolled_back"])
    check_output(Path(outcome.artifact_path))


def test_one_array_named_x_shapes_the_one_tensor_argument(tmp_path):
    class One(torch.nn.Module):
        def forward(self, image: torch.Tensor, scale: float):
            return image.flatten(1) * scale

    path = tmp_path / "one.pt"
    torch.jit.script(One()).save(str(path))
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2, 3), np.float32), scale=np.array(2.0))
    found = analysis.analyse(path, 1, eval_path=tmp_path / "d.npz", latency_seconds=0.05)
    assert [(s["name"], s["shape"]) for s in found["inputs"]] == [("image", [None, 2, 3]), ("scale", [])]
    # input_shape names it the same way, or as the default "input".
    assert (
        analysis.analyse(path, 1, input_shape=[1, 2, 3], latency_seconds=0.05)["inputs"][0]["name"] == "image"
    )


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"audio": [1, 16], "ctx": [1, 32]}, "'ctx', which forward() does not take"),
        ({"audio": [1, 16]}, "an array for 'context'"),
        ([1, 16], "'input', which forward() does not take; it takes 'audio', 'context', 'sr'"),
    ],
)
def test_inputs_that_do_not_fit_forward_are_refused_with_its_arguments(mixer, given, words):
    with pytest.raises(ModelRejected) as caught:
        analysis.analyse(mixer, 1, input_shape=given, latency_seconds=0.05)
    assert words in caught.value.message


def test_an_argument_of_a_type_optideck_cannot_feed_is_refused_by_name(tmp_path):
    path = tmp_path / "listed.pt"
    torch.jit.script(Listed()).save(str(path))
    with pytest.raises(ModelRejected, match=r"'parts' as List\[Tensor\]"):
        analysis.analyse(path, 1, input_shape=[1, 4], latency_seconds=0.05)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (np.array(2**64 - 1, np.uint64), "sr"),  # would wrap to -1
        (np.array(1e300), "sr"),  # no int64 holds it
        (np.array(16000.5), "sr"),  # would lose its fraction
        (np.array(5), "loud"),  # would become True
    ],
)
def test_a_number_the_argument_cannot_hold_exactly_is_refused_by_name(mixer, tmp_path, value, name):
    with pytest.raises(DatasetRejected, match=f"input '{name}'.*cannot take"):
        analysis.analyse(mixer, 1, eval_path=_data(tmp_path / "d.npz", **{name: value}), latency_seconds=0.05)


def test_a_whole_float_feeds_an_int_argument(mixer, tmp_path):
    data = _data(tmp_path / "d.npz", sr=np.array(16000.0), loud=np.array(1))
    assert analysis.analyse(mixer, 1, eval_path=data, latency_seconds=0.05)["eval_data"]["samples"] == 24


@pytest.mark.parametrize(
    "given",
    [
        {"audio": [1, 16], "context": [1, 32], "sr": [1]},
        "npz",  # sr as one value per sample
    ],
)
def test_a_shape_for_a_number_argument_is_refused(mixer, tmp_path, given):
    kwargs = (
        {"eval_path": _data(tmp_path / "d.npz", sr=np.full(24, 16000))}
        if given == "npz"
        else {"input_shape": given}
    )
    with pytest.raises(ModelRejected, match="'sr' as int: a number has no shape"):
        analysis.analyse(mixer, 1, latency_seconds=0.05, **kwargs)


def test_an_exported_program_input_of_a_type_numpy_lacks_is_refused_by_name(tmp_path):
    """bfloat16 has no numpy type to feed it from: refused at analysis, not a crash."""
    path = tmp_path / "bf16.pt2"
    module = torch.nn.Linear(4, 2).to(torch.bfloat16).eval()
    torch.export.save(torch.export.export(module, (torch.zeros(1, 4, dtype=torch.bfloat16),)), str(path))
    with pytest.raises(ModelRejected, match="Input 'input' is bfloat16; Optideck feeds bool, float16"):
        analysis.analyse(path, 1, latency_seconds=0.05)


class OddSelf(torch.nn.Module):
    def forward(s, x: torch.Tensor):  # noqa: N805 - the module's own name is its author's choice
        return x * 2


def test_the_module_argument_is_skipped_whatever_it_is_called(tmp_path):
    path = tmp_path / "odd.pt"
    torch.jit.script(OddSelf()).save(str(path))
    found = analysis.analyse(path, 1, input_shape=[1, 4], latency_seconds=0.05)
    assert found["inputs"] == [{"name": "x", "shape": [None, 4], "dtype": "float32"}]
