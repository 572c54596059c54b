"""Load a model of any accepted format behind one small interface.

Loaders run only in worker processes (see worker.py). ONNX files are parsed by
the ONNX protobuf reader; TorchScript by TorchScript's own deserializer, whose
unpickler resolves only TorchScript types and cannot call Python code; .pt2
programs only after formats.safe_exported_program_copy removed every pickle.
"""

from __future__ import annotations

import collections
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import formats, screening
from .errors import ModelRejected, public_message

if TYPE_CHECKING:  # torch is imported where a model is loaded, never at import time
    import torch

ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
# ONNX TensorProto element types we can feed, as numpy dtypes.
ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 9: "bool"}


@dataclass
class InputSpec:
    name: str
    shape: list[int | None]  # None: dynamic (the batch dimension, usually)
    dtype: str = "float32"

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": self.shape, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(data["name"], list(data["shape"]), data.get("dtype", "float32"))

    @property
    def fixed_batch(self) -> int | None:
        return self.shape[0] if self.shape and self.shape[0] is not None else None


@dataclass
class LoadedModel:
    """A runnable model: feed numpy arrays by input name, get numpy outputs."""

    format: str
    inputs: list[InputSpec]
    output_names: list[str]
    parameter_count: int
    op_histogram: dict[str, int]
    runner: Callable[[dict[str, np.ndarray]], list[np.ndarray]] = field(repr=False)
    torch_module: torch.jit.ScriptModule | torch.export.ExportedProgram | None = field(
        default=None, repr=False
    )
    scalars: frozenset[str] = frozenset()  # inputs a TorchScript forward() takes as numbers

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.runner(feeds)


def load(
    path: Path,
    model_format: str,
    threads: int,
    input_specs: list[InputSpec] | None = None,
    inspect: bool = True,
    max_unpacked_bytes: int = screening.MAX_UNPACKED_BYTES,
) -> LoadedModel:
    if model_format == formats.ONNX:
        return load_onnx(path, threads) if inspect else run_onnx(path, threads)
    if model_format == formats.TORCHSCRIPT:
        return _load_torchscript(path, threads, input_specs, max_unpacked_bytes)
    if model_format == formats.EXPORTED_PROGRAM:
        return _load_exported_program(path, threads, input_specs, max_unpacked_bytes)
    raise ModelRejected(f"Unknown model format {model_format!r}.")


def load_onnx(path: Path, threads: int) -> LoadedModel:
    """Parse, check and inspect an ONNX file, then make it runnable."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's decode errors have no common base
        raise ModelRejected(
            "The file is not a valid ONNX model (nor a TorchScript or .pt2 "
            "file): it could not be read as any of them."
        ) from exc
    screening.check_onnx(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # the checker's errors have no common base
        raise ModelRejected(f"The ONNX model is not valid: {public_message(exc)}") from exc
    initializer_names = {t.name for t in model.graph.initializer}
    inputs = [_onnx_input(value) for value in model.graph.input if value.name not in initializer_names]
    if not inputs:
        raise ModelRejected("The ONNX model has no inputs.")
    params = int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer))
    ops = collections.Counter(node.op_type for node in model.graph.node)
    loaded = run_onnx(path, threads)
    loaded.inputs, loaded.parameter_count, loaded.op_histogram = inputs, params, dict(ops)
    return loaded


def run_onnx(path: Path, threads: int) -> LoadedModel:
    """An ONNX model ready to run, without the checker and the inspection.

    For files already checked (an analysed upload) or written by the engine
    itself: parsing and checking a model twice is most of a short session's time.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelRejected(f"ONNX Runtime cannot run this model: {public_message(exc)}") from exc
    output_names = [o.name for o in session.get_outputs()]
    inputs = [
        InputSpec(i.name, [_fixed(d) for d in i.shape], ORT_DTYPES.get(i.type, "float32"))
        for i in session.get_inputs()
    ]

    def run(feeds):
        return session.run(output_names, feeds)

    return LoadedModel(formats.ONNX, inputs, output_names, 0, {}, run)


def _onnx_input(value) -> InputSpec:
    tensor = value.type.tensor_type
    dtype = ONNX_DTYPES.get(tensor.elem_type)
    if dtype is None:
        raise ModelRejected(f"Input {value.name!r} has an element type Optideck cannot feed.")
    shape = [_fixed(dim.dim_value) if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
    return InputSpec(value.name, shape, dtype)


def _fixed(size) -> int | None:
    """A dimension's size, or None when it is left open: a name, or a size stored as -1
    (some exporters' way of saying "any")."""
    return size if isinstance(size, int) and size > 0 else None


def _torch_runner(module, specs: list[InputSpec], scalars: frozenset[str] = frozenset()):
    """`scalars`: the inputs forward() takes as Python numbers (int, float, bool)."""
    import torch

    def run(feeds):
        with torch.inference_mode():
            args = [
                feeds[s.name].item()
                if s.name in scalars
                else torch.from_numpy(np.ascontiguousarray(feeds[s.name]))
                for s in specs
            ]
            out = module(*args)
        if isinstance(out, dict):
            out = list(out.values())
        if not isinstance(out, list | tuple):
            out = [out]
        return [o.detach().numpy() for o in out]

    return run


def _load_torchscript(
    path: Path, threads: int, specs: list[InputSpec] | None, max_unpacked_bytes: int
) -> LoadedModel:
    import torch

    screening.check_torchscript(path, max_unpacked_bytes)
    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.13 marks TorchScript deprecated
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # TorchScript raises RuntimeError and friends
        raise ModelRejected(f"The TorchScript file cannot be loaded: {public_message(exc)}") from exc
    module.eval()
    specs, scalars = _script_inputs(module, specs or [])
    params = sum(p.numel() for p in module.parameters())
    ops = collections.Counter(
        node.kind().split("::", 1)[1]
        for node in module.inlined_graph.nodes()
        if node.kind().startswith("aten::")
    )
    return LoadedModel(
        formats.TORCHSCRIPT,
        specs,
        [],
        int(params),
        dict(ops),
        _torch_runner(module, specs, scalars),
        torch_module=module,
        scalars=scalars,
    )


# forward()'s number arguments, as the 0-d arrays that feed them (and that ONNX Runtime
# takes once the exporter has made them inputs): TorchScript's float is a double.
SCALAR_DTYPES = {"int": "int64", "float": "float64", "bool": "bool"}
# What an input is called before the model's own names are known: input_shape given as one
# list (analysis.DEFAULT_INPUT_NAME), and an .npz's single array.
UNNAMED_INPUTS = ("input", "x")


def _script_inputs(module, given: list[InputSpec]) -> tuple[list[InputSpec], frozenset[str]]:
    """forward()'s inputs, in its order: tensors shaped as `given` says, numbers as 0-d
    arrays of their type (defaults included: the exporter needs every argument). `given`
    names them, except that one spec named as UNNAMED_INPUTS shapes the one tensor argument
    named by none."""
    # The first is the module itself, whatever forward() calls it.
    arguments = list(module.forward.schema.arguments)[1:]
    for argument in arguments:
        if str(argument.type) != "Tensor" and str(argument.type) not in SCALAR_DTYPES:
            raise ModelRejected(
                f"forward() takes {argument.name!r} as {argument.type}; Optideck feeds tensors "
                "and int, float or bool numbers."
            )
    names = {a.name for a in arguments}
    by_name = {spec.name: spec for spec in given if spec.name in names}
    strays = [spec for spec in given if spec.name not in names]
    unshaped = [a.name for a in arguments if str(a.type) == "Tensor" and a.name not in by_name]
    if len(strays) == 1 and strays[0].name in UNNAMED_INPUTS and len(unshaped) == 1:
        by_name[unshaped[0]], strays, unshaped = strays[0], [], []
    if strays:
        raise ModelRejected(
            f"The inputs given name {', '.join(repr(s.name) for s in strays)}, which forward() does "
            f"not take; it takes {', '.join(repr(a.name) for a in arguments) or 'nothing'}."
        )
    shaped_numbers = [
        a for a in arguments if str(a.type) in SCALAR_DTYPES and a.name in by_name and by_name[a.name].shape
    ]
    if shaped_numbers:
        raise ModelRejected(
            "forward() takes "
            + ", ".join(f"{a.name!r} as {a.type}" for a in shaped_numbers)
            + ": a number has no shape. Give it as a 0-d array in the evaluation .npz, and no "
            "shape in input_shape."
        )
    if unshaped:
        raise ModelRejected(
            "TorchScript files do not record their input shapes: send input_shape (for example "
            "[1, 64], or {name: shape} for several inputs) or evaluation data with an array for "
            f"{', '.join(repr(n) for n in unshaped)}."
        )
    specs = [
        InputSpec(a.name, list(by_name[a.name].shape), by_name[a.name].dtype)
        if str(a.type) == "Tensor"
        else InputSpec(a.name, [], SCALAR_DTYPES[str(a.type)])
        for a in arguments
    ]
    return specs, frozenset(a.name for a in arguments if str(a.type) in SCALAR_DTYPES)


def _load_exported_program(
    path: Path, threads: int, specs: list[InputSpec] | None, max_unpacked_bytes: int
) -> LoadedModel:
    import torch

    screening.check_exported_program(path, max_unpacked_bytes)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        safe = formats.safe_exported_program_copy(path, Path(tmp) / "program.pt2")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.load(str(safe))
        except Exception as exc:  # deserialization errors vary by torch version
            raise ModelRejected(f"The .pt2 program cannot be loaded: {public_message(exc)}") from exc
    found = _exported_inputs(program)
    specs = specs or found
    params = sum(t.numel() for t in program.state_dict.values())
    ops = collections.Counter(
        str(node.target).split(".")[1] if str(node.target).startswith("aten.") else str(node.target)
        for node in program.graph.nodes
        if node.op == "call_function"
    )
    module = program.module()
    return LoadedModel(
        formats.EXPORTED_PROGRAM,
        specs,
        [],
        int(params),
        dict(ops),
        _torch_runner(module, specs),
        torch_module=program,
    )


def _exported_inputs(program) -> list[InputSpec]:
    import torch

    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise ModelRejected(f"Input {node.name!r} is not a tensor; Optideck feeds tensors only.")
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in ONNX_DTYPES.values():
            fed = ", ".join(sorted(set(ONNX_DTYPES.values())))
            raise ModelRejected(f"Input {node.name!r} is {dtype}; Optideck feeds {fed}.")
        shape: list[int | None] = [int(d) if isinstance(d, int) else None for d in value.shape]
        specs.append(InputSpec(node.name, shape, dtype))
    return specs
