"""Test factories: rows made directly, for tests about lists, filters and access.

Sessions made here never ran; tests that need a real run use the executor.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from webapp.extensions import db
from webapp.tables import ModelMetadata, OptimizationSession, utcnow


def gen_model(owner, name="model", **kw) -> ModelMetadata:
    values = dict(
        name=name,
        version=1,
        format="onnx",
        sha256=f"{abs(hash(name)):064x}"[:64],
        size_bytes=1000,
        parameter_count=10,
        input_spec=[{"name": "input", "shape": [None, 4], "dtype": "float32"}],
        analysis={
            "baseline_latency_ms": 1.0,
            "baseline_latency_batch": 1,
            "threads": 1,
            "op_histogram": {"Gemm": 1},
        },
        owner_id=owner.id,
    )
    model = ModelMetadata(**{**values, **kw})
    db.session.add(model)
    db.session.commit()
    return model


def gen_session(
    model, owner, status="completed", age_days=0, size=None, speed=None, **kw
) -> OptimizationSession:
    created = utcnow() - timedelta(days=age_days)
    results = None
    if status == "completed":
        size = 50.0 if size is None else size
        speed = 100.0 if speed is None else speed
        results = {
            "size_reduction_percent": size,
            "speed_improvement_percent": speed,
            "speedup": round(1 + speed / 100, 3),
            "accuracy_retention_percent": 99.5,
            "criteria_met": True,
        }
    kw = {"techniques": ["quantization"], "parameters": {}, **kw}
    if status in ("completed", "failed", "cancelled"):
        kw.setdefault("completed_at", created)
    session = OptimizationSession(
        model_id=model.id,
        owner_id=owner.id,
        status=status,
        criteria={},
        plan=[],
        results=results,
        size_reduction_percent=size,
        speed_improvement_percent=speed,
        created_at=created,
        updated_at=created,
        progress=100.0 if status == "completed" else 0.0,
        **kw,
    )
    db.session.add(session)
    db.session.commit()
    return session


def gen_compared(model, owner, size, speed, retained, **results) -> OptimizationSession:
    """A completed session with the figures the compare page and API read: sizes from a
    1000-byte original, one kept int8 dynamic step."""
    session = gen_session(model, owner, "completed", size=size, speed=speed)
    session.results = {
        **session.results,
        "accuracy_retention_percent": retained,
        "original_size_bytes": 1000,
        "optimized_size_bytes": round(1000 * (1 - size / 100)),
        "steps": [{"technique": "quantization", "params": {"mode": "int8_dynamic"}, "outcome": "kept"}],
        **results,
    }
    db.session.commit()
    return session


def gen_artifact(session, content: bytes = b"onnx bytes") -> OptimizationSession:
    """Give a session an artifact file in storage (these bytes, not a real model)."""
    from webapp.services import get

    sha = hashlib.sha256(content).hexdigest()
    stored = get("blobs").path_for(sha)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(content)
    session.artifact_sha256, session.artifact_size_bytes = sha, len(content)
    db.session.commit()
    return session
