"""Small real models trained offline on scikit-learn's bundled digits data.

Used by `flask demo` and by the tests: an MLP and a small CNN, trained in
seconds on the CPU and saved in every accepted format, with the test split as
evaluation data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 0
TEST_SHARE = 0.25


@dataclass
class DemoData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits(image: bool) -> DemoData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=TEST_SHARE, random_state=SEED, stratify=y
    )
    return DemoData(x_train, y_train, x_test, y_test)


def mlp(hidden: int = 1024):
    import torch

    torch.manual_seed(SEED)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )


def cnn():
    import torch

    torch.manual_seed(SEED)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )


def train(model, data: DemoData, epochs: int = 12, batch: int = 64) -> float:
    """Train with Adam; return accuracy on the test split."""
    import torch

    torch.manual_seed(SEED)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        predicted = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    return float((predicted == data.y_test).mean())


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def save(model, example: np.ndarray, folder: Path, stem: str) -> dict[str, Path]:
    """Save `model` as ONNX, TorchScript and a torch.export program, batch left free."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    sample = torch.from_numpy(example[:2])
    paths = {
        "onnx": folder / f"{stem}.onnx",
        "torchscript": folder / f"{stem}.pt",
        "exported_program": folder / f"{stem}.pt2",
    }
    batch = torch.export.Dim("batch", min=1, max=4096)
    with quiet():
        program = torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(paths["exported_program"]))
        torch.jit.save(torch.jit.trace(model, sample), str(paths["torchscript"]))
        torch.onnx.export(
            model,
            (sample,),
            str(paths["onnx"]),
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
    return paths


def save_eval_data(data: DemoData, path: Path, labels: bool = True) -> Path:
    # Named arrays, not **a_dict: mypy would match the dict's values with allow_pickle too.
    if labels:
        np.savez(path, x=data.x_test, y=data.y_test)
    else:
        np.savez(path, x=data.x_test)
    return path
