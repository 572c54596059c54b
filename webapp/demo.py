"""`flask demo`: real demo models on the digits data, and sessions run to completion."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
from flask import current_app

from .extensions import db
from .services import model_store, optimization, users
from .tables import FINISHED_STATUSES, ModelMetadata, OptimizationSession

# (model name, architecture, saved format, techniques, parameters)
DEMO_SESSIONS = (
    ("digits-mlp", "mlp", "onnx", ["quantization"], {"quantization": {"mode": "int8_dynamic"}}),
    (
        "digits-mlp-torchscript",
        "mlp",
        "torchscript",
        ["pruning", "quantization"],
        {"pruning": {"sparsity": 0.5}, "quantization": {"mode": "int8_dynamic"}},
    ),
    (
        "digits-mlp-export",
        "mlp",
        "exported_program",
        ["compression", "quantization"],
        {"compression": {"energy": 0.9}, "quantization": {"mode": "int8_dynamic"}},
    ),
    ("digits-cnn", "cnn", "onnx", ["quantization"], {"quantization": {"mode": "int8_static"}}),
)
SESSION_WAIT_SECONDS = 600


def create_demo_models(owner_name: str) -> list[OptimizationSession]:
    """Train, upload and optimize the demo models once; later calls do nothing."""
    owner = users.find(owner_name)
    existing = {m.name for m in db.session.query(ModelMetadata).filter_by(owner_id=owner.id)}
    wanted = [entry for entry in DEMO_SESSIONS if entry[0] not in existing]
    sandbox = current_app.extensions["optideck.sandbox"]
    if not sandbox.accepts_code:
        click.echo(
            "No sandbox works here (install bubblewrap), so uploads that carry code are "
            "refused: the demo uploads its ONNX models only."
        )
        wanted = [entry for entry in wanted if entry[2] == "onnx"]
    if not wanted:
        click.echo("Demo models already exist.")
        return []
    from .engine import demo_models

    sessions = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        trained = {}
        for architecture in sorted({entry[1] for entry in wanted}):
            data = demo_models.digits(image=architecture == "cnn")
            model = demo_models.mlp() if architecture == "mlp" else demo_models.cnn()
            started = time.monotonic()
            accuracy = demo_models.train(model, data)
            click.echo(
                f"Trained the demo {architecture} on digits in "
                f"{time.monotonic() - started:.1f} s: test accuracy {accuracy:.1%}"
            )
            files = demo_models.save(model, data.x_test, folder, architecture)
            files["eval"] = demo_models.save_eval_data(data, folder / f"{architecture}_eval.npz")
            trained[architecture] = files
        for name, architecture, saved_format, techniques, parameters in wanted:
            files = trained[architecture]
            with files[saved_format].open("rb") as model_file, files["eval"].open("rb") as eval_file:
                model = model_store.add(owner, model_file, files[saved_format].name, name, eval_file)
            click.echo(f"Uploaded {name} ({model.format}, {model.parameter_count:,} parameters)")
            sessions.append(optimization.start(owner, model.id, techniques, parameters))
    return sessions


def wait_for(sessions: list[OptimizationSession]) -> None:
    """Run the sessions with the local executor and report each outcome."""
    executor = current_app.extensions["optideck.executor"]
    executor.start()
    deadline = time.monotonic() + SESSION_WAIT_SECONDS
    try:
        pending = {s.id for s in sessions}
        while pending and time.monotonic() < deadline:
            # The database is the truth about a session's state; check it twice a second
            # (the executor thread does the work meanwhile).
            time.sleep(0.5)
            db.session.expire_all()
            for session_id in list(pending):
                session = db.session.get(OptimizationSession, session_id)
                if session.status in FINISHED_STATUSES:
                    pending.discard(session_id)
                    click.echo(_outcome(session))
    finally:
        executor.shutdown()


def _outcome(session: OptimizationSession) -> str:
    if session.status != "completed":
        return f"Session {session.id} ({session.model.name}) {session.status}: {session.error_message}"
    r = session.results
    return (
        f"Session {session.id} ({session.model.name}, {'+'.join(session.techniques)}): "
        f"{r['size_reduction_percent']:.1f} % smaller, {r['speedup']:.2f}x speed, "
        f"{r['accuracy_retention_percent']:.2f} % accuracy retained"
    )
