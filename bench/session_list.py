"""Benchmark: the session list and dashboard statistics at 100,000 sessions.

    python3 bench/session_list.py [--sessions 100000] [--clients 8] [--requests 400]
                                  [--workers 1[,2,4]] [--redis-url redis://127.0.0.1:6379/5]
                                  [--database-url postgresql+psycopg://postgres@127.0.0.1/bench]

Scaled out (the issue's run; create the database first, `createdb bench_list`):

    python3 bench/session_list.py --sessions 1000000 --clients 8 --requests 2000 --workers 1,2,4 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_list \\
        --redis-url redis://127.0.0.1:6379/5

Seeds a fresh database (SQLite by default) once with sessions spread over owners,
models, statuses and 90 days (on PostgreSQL with COPY), then for each worker count
starts the real server (`flask --app webapp serve`, gunicorn with that many worker
processes) and sends each scenario from N concurrent keep-alive clients. With
--redis-url the server's processes share the dashboard cache, list totals and list
pages there (and each remembers bearer tokens);
that Redis database is FLUSHED before each server starts, so every worker count
begins with a cold cache, and the web processes run no executor (the Celery backend,
no worker started), so the seeded `queued` sessions stay queued. Without Redis the
server's local executor claims and runs them while the benchmark runs. Prints
p50/p95/p99 latency and requests per second per worker count; nothing is asserted.
The list and the cached statistics run on the default configuration (cached for
10 s, cleared by any change), the first page once more while another process commits
--changes changes a second to a listed session (each clearing the cached pages), then
the first page and the statistics with the cache off (--no-uncached skips the
statistics, a full scan per request).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, timedelta
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
        copy = db.engine.dialect.name == "postgresql"
        table = OptimizationSession.__table__
        columns = [
            "model_id", "owner_id", "status", "progress", "techniques", "parameters", "criteria", "plan",
            "results", "size_reduction_percent", "speed_improvement_percent", "created_at", "updated_at",
            "completed_at",
        ]  # fmt: skip

        def flush(rows: list[dict]) -> None:
            if not copy:
                db.session.execute(table.insert(), rows)
                db.session.commit()
                return
            # PostgreSQL: COPY, a round trip per batch and no statement to plan, in its
            # text format (JSON as text; naive UTC, as webapp.tables.UTCDateTime stores).
            buffer = io.StringIO()
            for row in rows:
                fields = []
                for column in columns:
                    value = row[column]
                    if value is None:
                        fields.append("\\N")
                    elif isinstance(value, (dict, list)):
                        fields.append(json.dumps(value).replace("\\", "\\\\"))
                    elif column.endswith("_at"):
                        fields.append(value.astimezone(UTC).replace(tzinfo=None).isoformat())
                    else:
                        fields.append(str(value))
                buffer.write("\t".join(fields) + "\n")
            raw = db.engine.raw_connection()
            try:
                with (
                    raw.cursor() as cursor,
                    cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as out,
                ):
                    out.write(buffer.getvalue())
                raw.commit()
            finally:
                raw.close()

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
            if len(batch) == 20000:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        db.session.commit()
        # Statistics for the planner; on PostgreSQL also the policy map autovacuum
        # would build on a live system (without it index-only scans read the table).
        analyze = "VACUUM ANALYZE" if db.engine.dialect.name == "postgresql" else "ANALYZE"
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(db.text(analyze))
        return tokens.create_personal(admin, "bench", 1, False).access_token


def serve(
    instance: Path, database_url: str | None, cache_seconds: int, workers: int, redis_url: str | None = None
) -> Server:
    env = {
        "OPTIDECK_APP_SECRET_KEY": "bench" * 8,
        "OPTIDECK_LOGGING_LEVEL": "WARNING",
        "OPTIDECK_SERVER_THREADS": "16",
        "OPTIDECK_SERVER_WORKERS": str(workers),
        "OPTIDECK_DASHBOARD_STATS_CACHE_SECONDS": str(cache_seconds),
    }
    if database_url:
        env["OPTIDECK_DATABASE_URL"] = database_url
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()  # a cold shared cache for every server
        env["OPTIDECK_REDIS_URL"] = redis_url
        # The scaled-out deployment: web processes run no executor (Celery workers would,
        # none is started here). With the local executor every web process would claim the
        # tenth of seeded sessions that are `queued` (fake models) and run them, two at a
        # time, for the whole benchmark: sandboxed workers eating the CPU, and each change
        # clearing the cache.
        env["OPTIDECK_EXECUTOR_BACKEND"] = "celery"
    return Server(instance, env).start()


def load(port: int, token: str, path: str, clients: int, requests: int) -> dict:
    """`requests` GETs shared by `clients`, after one client's run to warm the server's
    caches and pools (and, with several workers, a round from every client so each
    process has its pool open); any answer but 200 stops the benchmark."""
    per_client = max(1, requests // clients)
    loadgen.run(port, token, path, 1, per_client)
    loadgen.run(port, token, path, clients, 4)
    result = loadgen.run(port, token, path, clients, per_client)
    if result["errors"]:
        raise RuntimeError(f"{path}: {result['errors']}")
    return result


@contextmanager
def changing(instance: Path, args):
    """While the block runs, another process's writes (this one's, through the app and
    its ORM, as a worker's progress would be): `args.changes` commits a second, each to
    a row every list shows, each moving the lists' cache generation on."""
    from webapp import create_app
    from webapp.extensions import db
    from webapp.tables import OptimizationSession, utcnow

    overrides = {
        "app": {"instance_dir": str(instance), "secret_key": "bench" * 8},
        "logging": {"level": "WARNING"},
    }
    if args.database_url:
        overrides["database"] = {"url": args.database_url}
    if args.redis_url:
        overrides["redis"] = {"url": args.redis_url}
        overrides["executor"] = {"backend": "celery"}
    app = create_app(overrides)
    stop = threading.Event()

    def write() -> None:
        with app.app_context():
            newest = db.session.scalar(db.select(OptimizationSession).order_by(OptimizationSession.id.desc()))
            step = 0
            while not stop.wait(1 / args.changes):
                step += 1
                newest.current_step = f"bench step {step}"
                newest.updated_at = utcnow()
                db.session.commit()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


def measure(instance: Path, token: str, args, workers: int, scenarios: list[tuple[str, str]]) -> list:
    rows = []
    # The default configuration (statistics, list totals and, with Redis, list pages
    # cached, cleared by any change), then the cache turned off for the uncached figures.
    server = serve(instance, args.database_url, 10, workers, args.redis_url)
    try:
        for name, path in scenarios:
            rows.append((name, load(server.port, token, path, args.clients, args.requests)))
            print_row(workers, *rows[-1])
        if args.changes:
            with changing(instance, args):
                rows.append(
                    (
                        f"list, first page, {args.changes:g} changes/s",
                        load(server.port, token, scenarios[0][1], args.clients, args.requests),
                    )
                )
            print_row(workers, *rows[-1])
        rows.append(
            (
                "stats, cached",
                load(server.port, token, "/api/v1/dashboard/stats", args.clients, args.requests),
            )
        )
        print_row(workers, *rows[-1])
    finally:
        server.stop()
    server = serve(instance, args.database_url, 0, workers, args.redis_url)
    try:
        first_page = scenarios[0][1]
        rows.append(
            ("list, first page, uncached", load(server.port, token, first_page, args.clients, args.requests))
        )
        print_row(workers, *rows[-1])
        if not args.no_uncached:
            rows.append(
                (
                    "stats, uncached",
                    load(server.port, token, "/api/v1/dashboard/stats", args.clients, args.requests),
                )
            )
            print_row(workers, *rows[-1])
    finally:
        server.stop()
    return rows


HEADER = f"{'workers':>7}  {'scenario':<36}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>9}"


def print_row(workers: int, name: str, r: dict) -> None:
    print(
        f"{workers:>7}  {name:<36}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}{r['rps']:>9.0f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None, help="shared cache of the server's processes (flushed)")
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1],
        help="gunicorn worker processes; a list (1,2,4) measures each in turn",
    )
    parser.add_argument(
        "--no-uncached",
        action="store_true",
        help="skip the uncached statistics (a full scan per request: minutes at 1,000,000 sessions)",
    )
    parser.add_argument(
        "--changes",
        type=float,
        default=10.0,
        help="commits a second to a listed session during one more run of the first page "
        "(each drops the cached pages); 0 skips it",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp)
        started = time.perf_counter()
        token = seed(instance, args.database_url, args.sessions)
        print(
            f"seeded {args.sessions:,} sessions in {time.perf_counter() - started:.1f} s "
            f"({args.database_url or 'SQLite'})",
            flush=True,
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
        print(HEADER, flush=True)
        results = {}
        for workers in args.workers:
            results[workers] = measure(instance, token, args, workers, scenarios)

    print()
    print(
        f"{args.clients} concurrent clients, {args.requests} requests per scenario, gunicorn "
        f"(16 threads per worker), {'Redis ' + args.redis_url if args.redis_url else 'no Redis'}"
    )
    print(HEADER)
    for workers, rows in results.items():
        for name, r in rows:
            print_row(workers, name, r)


if __name__ == "__main__":
    main()
