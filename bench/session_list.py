"""Benchmark: the session list and dashboard statistics at 100,000 sessions.

    python3 bench/session_list.py [--sessions 100000] [--clients 8] [--requests 400]
                                  [--database-url postgresql+psycopg://postgres@127.0.0.1/bench]

Seeds a fresh database (SQLite by default) with sessions spread over owners,
models, statuses and 90 days, starts the real server (`flask --app webapp
serve`, gunicorn) and sends each scenario from N concurrent keep-alive clients.
Prints p50/p95/p99 latency and requests per second; nothing is asserted.
The list and the cached statistics run on the default configuration (cached
for 10 s, cleared by any change); the uncached statistics with the cache off.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import loadgen

from webapp.testing import Server


def seed(instance: Path, database_url: str | None, count: int) -> str:
    """Create the schema, users, models and `count` sessions; return an admin token."""
    from flask_migrate import upgrade

    from webapp import create_app
    from webapp.extensions import db
    from webapp.services import tokens, users
    from webapp.tables import ModelMetadata, OptimizationSession, utcnow

    overrides = {
        "app": {"instance_dir": str(instance), "secret_key": "bench" * 8},
        "logging": {"level": "WARNING"},
    }
    if database_url:
        overrides["database"] = {"url": database_url}
    app = create_app(overrides)
    with app.app_context():
        upgrade()
        admin = users.create("bench-admin", "bench-password-1", "admin")
        owners = [admin] + [users.create(f"bench-op{n}", "bench-password-1", "operator") for n in range(4)]
        models = []
        for n in range(20):
            model = ModelMetadata(
                name=f"model-{n}",
                version=1,
                format="onnx",
                sha256=f"{n:064x}",
                size_bytes=1000,
                parameter_count=10,
                input_spec=[],
                analysis={"baseline_latency_ms": 1.0},
                owner_id=owners[n % len(owners)].id,
            )
            db.session.add(model)
            models.append(model)
        db.session.commit()
        rng = random.Random(0)  # noqa: S311 - reproducible test data, not secrets
        now = utcnow()
        statuses = ["completed"] * 7 + ["failed", "cancelled", "queued"]
        batch = []
        for _ in range(count):
            model = models[rng.randrange(len(models))]
            status = statuses[rng.randrange(len(statuses))]
            created = now - timedelta(seconds=rng.randrange(90 * 86400))
            done = status == "completed"
            size = round(rng.uniform(20, 80), 2) if done else None
            speed = round(rng.uniform(0, 400), 2) if done else None
            batch.append(
                {
                    "model_id": model.id,
                    "owner_id": model.owner_id,
                    "status": status,
                    "progress": 100.0 if done else 0.0,
                    "techniques": ["quantization"],
                    "parameters": {},
                    "criteria": {},
                    "plan": [],
                    "results": {
                        "size_reduction_percent": size,
                        "speed_improvement_percent": speed,
                        "accuracy_retention_percent": 99.5,
                        "criteria_met": True,
                    }
                    if done
                    else None,
                    "size_reduction_percent": size,
                    "speed_improvement_percent": speed,
                    "created_at": created,
                    "updated_at": created,
                    "completed_at": created + timedelta(seconds=30) if done else None,
                }
            )
            if len(batch) == 5000:
                db.session.execute(OptimizationSession.__table__.insert(), batch)
                db.session.commit()
                batch = []
        if batch:
            db.session.execute(OptimizationSession.__table__.insert(), batch)
            db.session.commit()
        db.session.commit()
        # Statistics for the planner; on PostgreSQL also the policy map autovacuum
        # would build on a live system (without it index-only scans read the table).
        analyze = "VACUUM ANALYZE" if db.engine.dialect.name == "postgresql" else "ANALYZE"
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(db.text(analyze))
        return tokens.create_personal(admin, "bench", 1, False).access_token


def serve(instance: Path, database_url: str | None, cache_seconds: int, workers: int) -> Server:
    env = {
        "OPTIDECK_APP_SECRET_KEY": "bench" * 8,
        "OPTIDECK_LOGGING_LEVEL": "WARNING",
        "OPTIDECK_SERVER_THREADS": "16",
        "OPTIDECK_SERVER_WORKERS": str(workers),
        "OPTIDECK_DASHBOARD_STATS_CACHE_SECONDS": str(cache_seconds),
    }
    if database_url:
        env["OPTIDECK_DATABASE_URL"] = database_url
    return Server(instance, env).start()


def load(port: int, token: str, path: str, clients: int, requests: int) -> dict:
    """`requests` GETs shared by `clients`, after one client's run to warm the server's
    caches and pools; any answer but 200 stops the benchmark."""
    per_client = max(1, requests // clients)
    loadgen.run(port, token, path, 1, per_client)
    result = loadgen.run(port, token, path, clients, per_client)
    if result["errors"]:
        raise RuntimeError(f"{path}: {result['errors']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp)
        started = time.perf_counter()
        token = seed(instance, args.database_url, args.sessions)
        print(
            f"seeded {args.sessions:,} sessions in {time.perf_counter() - started:.1f} s "
            f"({args.database_url or 'SQLite'})"
        )
        deep = (args.sessions * 9 // 10) // 50 * 50
        scenarios = [
            ("list, first page", "/api/v1/optimization/sessions"),
            (
                "list, filtered (status+model)",
                "/api/v1/optimization/sessions?status=completed&status=failed&model_id=3",
            ),
            ("list, sorted by size", "/api/v1/optimization/sessions?sort=size"),
            (f"list, deep page (skip={deep:,})", f"/api/v1/optimization/sessions?skip={deep}"),
        ]
        rows = []
        # The default configuration (statistics and list totals cached for 10 s, cleared
        # by any change), then the cache turned off for the uncached statistics.
        server = serve(instance, args.database_url, 10, args.workers)
        try:
            for name, path in scenarios:
                rows.append((name, load(server.port, token, path, args.clients, args.requests)))
            rows.append(
                (
                    "stats, cached",
                    load(server.port, token, "/api/v1/dashboard/stats", args.clients, args.requests),
                )
            )
        finally:
            server.stop()
        server = serve(instance, args.database_url, 0, args.workers)
        try:
            rows.append(
                (
                    "stats, uncached",
                    load(server.port, token, "/api/v1/dashboard/stats", args.clients, args.requests),
                )
            )
        finally:
            server.stop()

    print(
        f"{args.clients} concurrent clients, {args.requests} requests per scenario, "
        f"gunicorn ({args.workers} worker(s), 16 threads each)"
    )
    print(f"{'scenario':<36}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for name, r in rows:
        print(f"{name:<36}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}{r['rps']:>9.0f}")


if __name__ == "__main__":
    main()
