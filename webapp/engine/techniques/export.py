"""Export TorchScript and torch.export programs to ONNX, where the techniques run."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from .. import formats
from ..errors import TechniqueFailed, public_message
from ..loading import LoadedModel

OPSET = 18


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and deprecation notes; the session log says enough."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def to_onnx(model: LoadedModel, dst: Path, feeds: dict[str, np.ndarray]) -> dict:
    """`feeds`: one sample of every input; the numbers a TorchScript forward() takes are
    exported with their values (the exporter makes them 0-d inputs; an unused one it drops)."""
    import torch

    specs = model.inputs
    batch = 1 if specs[0].fixed_batch is None else specs[0].fixed_batch
    examples = tuple(
        feeds[spec.name].item()
        if spec.name in model.scalars
        else torch.zeros([batch] + [d or 1 for d in spec.shape[1:]], dtype=getattr(torch, spec.dtype))
        for spec in specs
    )
    dynamic = {spec.name: {0: "batch"} for spec in specs if spec.shape and spec.shape[0] is None}
    module = model.torch_module
    try:
        with _quiet():
            if module is None:  # no torch model (ONNX): failed like the exporters fail on it
                raise TypeError("there is no torch model to export")
            if model.format == formats.TORCHSCRIPT:
                # torch.onnx's dynamo path cannot take a ScriptModule; the
                # TorchScript exporter can, and is kept for exactly this input.
                torch.onnx.export(
                    module,
                    examples,
                    str(dst),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=[s.name for s in specs],
                    dynamic_axes=dynamic or None,
                )
            else:
                torch.onnx.export(
                    module,
                    examples,
                    str(dst),
                    dynamo=True,
                    opset_version=OPSET,
                    external_data=False,
                )
    except Exception as exc:  # exporter failures come in many types
        raise TechniqueFailed(f"Exporting to ONNX failed: {public_message(exc)}") from exc
    return {"opset": OPSET, "from_format": model.format}
