"""Benchmark: a Locust mix on the scaled-out deployment at 100,000 sessions.

    python3 bench/mix.py --sessions 100000 --seconds 90 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_mix \\
        --redis-url redis://127.0.0.1:6379/5

(create the database first: `createdb bench_mix`; the Redis database is FLUSHED.)

Seeds the database like bench/session_list.py (sessions spread over five accounts,
20 models, statuses and 90 days; the seeded `queued` ones are then marked cancelled,
or the Celery worker would queue a task for each of them at start, and the completed
ones get the results fields the session page reads), uploads the demo
MLP for the starting operators (analysed for real) and starts the scaled-out
deployment on this host: ONE server (`flask --app webapp serve`) with
--web-workers gunicorn worker processes (2: two web processes sharing one port),
the Celery backend with one `flask --app webapp worker`, Redis for the cache, rate
limits and live fan-out. Then, for --seconds, it runs at once:

- Locust (bench/locustfile.py, `locust --headless` in a process of its own):
  --browsers users who log in through the /login form (its csrf_token) and open the
  dashboard, filtered session lists and session pages, 1-3 s apart; --api-clients
  scripts listing sessions (and the dashboard statistics) with bearer tokens,
  0.5-1.5 s apart; --starters operators each starting a real session (demo MLP,
  int8 quantization) every --start-every seconds;
- --websockets clients on /api/v1/ws (asyncio, a process of their own), held open
  the whole run, counting the messages they receive.

Prints Locust's figures per request type (requests, failures, p50/p95/p99 in ms,
req/s), the sessions started and how many completed during the run and after up to
--drain seconds more, and what the WebSockets got. Nothing is asserted. Locust
rounds latencies above 100 ms to two significant digits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import session_list
from live_fanout import raise_open_files

from webapp.testing import Server, start_worker, stop_worker

PASSWORD = "bench-password-1"  # noqa: S105 - session_list.seed's, a throwaway instance
SECRET = "bench" * 8
HERE = Path(__file__).resolve().parent
COMPLETED_RESULTS = """
UPDATE optimization_sessions SET
  results = (results::jsonb || jsonb_build_object(
    'speedup', round((1 + speed_improvement_percent / 100)::numeric, 2),
    'speedup_low', round((0.95 + speed_improvement_percent / 100)::numeric, 2),
    'speedup_high', round((1.05 + speed_improvement_percent / 100)::numeric, 2),
    'accuracy_kind', 'accuracy', 'accuracy_before', 0.97, 'accuracy_after', 0.968,
    'evaluation_inputs', 500, 'latency_rounds', 15, 'latency_batch_size', 32,
    'original_size_bytes', 1000, 'optimized_size_bytes', 400,
    'original_compressed_size_bytes', 900, 'optimized_compressed_size_bytes', 350,
    'original_latency_ms', 2.0, 'optimized_latency_ms', 1.0))::json,
  criteria = '{"min_accuracy_retention_percent": 99.0, "latency_tolerance_percent": 5.0,
               "max_size_reduction_percent": 0.0, "max_inference_time_ms": 0.0}'::json
WHERE status = 'completed'
"""


def seed(instance: Path, database_url: str, count: int, starters: int) -> dict:
    """session_list's data, then tokens, sample session ids per account and the demo MLP
    for the starters; returns the Locust config."""
    started = time.perf_counter()
    session_list.seed(instance, database_url, count)
    from webapp import create_app
    from webapp.engine import demo_models
    from webapp.extensions import db
    from webapp.services import model_store, tokens
    from webapp.tables import OptimizationSession, User

    app = create_app(
        {
            "app": {"instance_dir": str(instance), "secret_key": SECRET},
            "logging": {"level": "WARNING"},
            "database": {"url": database_url},
        }
    )
    data = demo_models.digits(image=False)
    network = demo_models.mlp(hidden=256)
    demo_models.train(network, data, epochs=4)
    files = demo_models.save(network, data.x_test, instance / "files", "mlp")
    eval_path = demo_models.save_eval_data(data, instance / "files" / "eval.npz")
    rng = random.Random(1)  # noqa: S311 - reproducible test data, not secrets
    config: dict = {"password": PASSWORD, "browser_accounts": [], "api_tokens": [], "starters": []}
    with app.app_context():
        db.session.execute(
            db.update(OptimizationSession)
            .where(OptimizationSession.status == "queued")
            .values(status="cancelled")
        )
        # session_list's results carry only what lists and statistics read; the session
        # page's full report reads more, as a real session stores it (without them the
        # page shows a short "incomplete report" panel, less work than the real thing).
        db.session.execute(db.text(COMPLETED_RESULTS))
        db.session.commit()
        # Fresh planner statistics after those updates, as autovacuum would gather on a
        # live system: with the seed's (a tenth queued) the dashboard's active-sessions
        # query walked every row instead of the status index (116 ms, not 8).
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(db.text("ANALYZE optimization_sessions"))
        for user in db.session.scalars(db.select(User).order_by(User.id)):
            token = tokens.create_personal(user, "bench-mix", 1, False).access_token
            query = db.select(OptimizationSession.id)
            if user.role != "admin":
                query = query.where(OptimizationSession.owner_id == user.id)
            ids = list(db.session.scalars(query.order_by(OptimizationSession.id)))
            config["browser_accounts"].append(
                {"username": user.username, "session_ids": rng.sample(ids, 2000)}
            )
            config["api_tokens"].append(token)
            if user.role != "admin" and len(config["starters"]) < starters:
                with files["onnx"].open("rb") as model_file, eval_path.open("rb") as eval_file:
                    model = model_store.add(user, model_file, "mlp.onnx", "bench-mlp", eval_file)
                config["starters"].append({"username": user.username, "token": token, "model_id": model.id})
            if user.role == "admin":
                config["admin_token"] = token
    print(f"seeded {count:,} sessions and the demo MLP in {time.perf_counter() - started:.0f} s", flush=True)
    return config


def hold_websockets(url: str, tokens: list[str], count: int, stop, report) -> None:
    """`count` authenticated clients on /api/v1/ws, held until `stop`; what they got."""
    import websockets

    messages: Counter[str] = Counter()
    state = {"open": 0, "peak": 0, "closed_early": 0, "failed": 0}
    ready = asyncio.Event()

    async def one(token: str):
        try:
            async with websockets.connect(
                url,
                additional_headers={"Authorization": f"Bearer {token}"},
                max_queue=None,
                ping_interval=None,
                open_timeout=60,
                proxy=None,
            ) as ws:
                state["open"] += 1
                state["peak"] = max(state["peak"], state["open"])
                if state["open"] == count:
                    ready.set()
                try:
                    async for raw in ws:
                        messages[json.loads(raw).get("event", "?")] += 1
                finally:
                    state["open"] -= 1
                if not stop.is_set():
                    state["closed_early"] += 1
        except (OSError, TimeoutError, websockets.WebSocketException):
            if not stop.is_set():
                state["failed"] += 1

    async def main():
        tasks = []
        for n in range(count):
            tasks.append(asyncio.create_task(one(tokens[n % len(tokens)])))
            await asyncio.sleep(0.005)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), 120)
        report.send({"connected": state["open"]})
        while not stop.is_set():
            await asyncio.sleep(0.25)
        report.send({"messages": dict(messages), "open_at_end": state["open"], **state})
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    raise_open_files(count + 200)
    asyncio.run(main())


def session_status(url: str, token: str, session_id: int) -> str:
    request = urllib.request.Request(  # noqa: S310 - the bench's own server
        f"{url}/api/v1/optimization/sessions/{session_id}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.load(response)["status"]


def statuses(url: str, token: str, ids: list[int]) -> Counter[str]:
    return Counter(session_status(url, token, session_id) for session_id in ids)


def worker_rss(master_pid: int) -> list[int]:
    """RSS in MiB of each gunicorn worker of the server."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    sizes = []
    for pid in children:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        sizes.append(int(fields["VmRSS"].split()[0]) // 1024)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=90)
    parser.add_argument("--database-url", required=True, help="PostgreSQL, created beforehand")
    parser.add_argument("--redis-url", required=True, help="cache, broker and fan-out (FLUSHED)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers of the one server")
    parser.add_argument("--browsers", type=int, default=50)
    parser.add_argument("--api-clients", type=int, default=10)
    parser.add_argument("--starters", type=int, default=3, help="operators starting sessions (at most 4)")
    parser.add_argument(
        "--start-every", type=float, default=12.0, help="seconds between one starter's sessions"
    )
    parser.add_argument("--websockets", type=int, default=500)
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds to wait for started sessions after"
    )
    args = parser.parse_args()
    raise_open_files(args.websockets + 500)

    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp)
        config = seed(instance, args.database_url, args.sessions, args.starters)
        config.update(
            browsers=args.browsers,
            api_clients=args.api_clients,
            start_every_seconds=args.start_every,
        )
        config_path = instance / "mix.json"
        config_path.write_text(json.dumps(config))
        env = {
            "OPTIDECK_APP_SECRET_KEY": SECRET,
            "OPTIDECK_LOGGING_LEVEL": "WARNING",
            "OPTIDECK_DATABASE_URL": args.database_url,
            "OPTIDECK_REDIS_URL": args.redis_url,
            "OPTIDECK_STORAGE_DIR": str(instance / "storage"),
            "OPTIDECK_EXECUTOR_BACKEND": "celery",
            "OPTIDECK_SERVER_WORKERS": str(args.web_workers),
            # gunicorn's workers share the port; either may hold every WebSocket.
            "OPTIDECK_SERVER_THREADS": str(args.websockets + 64),
            "OPTIDECK_LIVE_MAX_PER_USER": "0",
            "OPTIDECK_LIVE_MAX_PER_ADDRESS": "0",
            # Fifty browsers log in from one address within seconds.
            "OPTIDECK_SECURITY_LOGIN_RATE_LIMIT": "10000 per minute",
        }
        folder = instance / "web"
        folder.mkdir()
        server = Server(folder, env).start()
        worker = holder = None
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        mine, theirs = context.Pipe()
        try:
            worker = start_worker(server.env, instance / "celery")
            holder = context.Process(
                target=hold_websockets,
                args=(
                    f"ws://127.0.0.1:{server.port}/api/v1/ws",
                    config["api_tokens"],
                    args.websockets,
                    stop,
                    theirs,
                ),
                daemon=True,
            )
            holder.start()
            if not mine.poll(180):
                raise RuntimeError("the WebSocket clients did not connect in time")
            connected = mine.recv()["connected"]
            users = args.browsers + args.api_clients + len(config["starters"])
            load_before = os.getloadavg()
            began = time.perf_counter()
            prefix = instance / "locust"
            log = instance / "locust.log"
            with log.open("wb") as out:
                subprocess.run(  # noqa: S603 - fixed argv, no shell
                    [
                        sys.executable,
                        "-m",
                        "locust",
                        "-f",
                        str(HERE / "locustfile.py"),
                        "--headless",
                        "--users",
                        str(users),
                        "--spawn-rate",
                        "10",
                        "--run-time",
                        f"{args.seconds}s",
                        "--stop-timeout",
                        "5",
                        "--host",
                        server.url,
                        "--csv",
                        str(prefix),
                        "--only-summary",
                        "--exit-code-on-error",
                        "0",
                    ],
                    env={**os.environ, "BENCH_MIX_CONFIG": str(config_path)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=args.seconds + 120,
                )
            wall = time.perf_counter() - began
            load_after = os.getloadavg()
            rss = worker_rss(server.process.pid)
            stop.set()
            sockets = mine.recv() if mine.poll(30) else {}
            text = log.read_text()
            started_line = [line for line in text.splitlines() if line.startswith("BENCH_MIX_STARTED ")]
            started = json.loads(started_line[-1].split(" ", 1)[1]) if started_line else []
            at_end = statuses(server.url, config["admin_token"], started)
            deadline = time.monotonic() + args.drain
            after = at_end
            while time.monotonic() < deadline and after["queued"] + after["running"]:
                time.sleep(2)
                after = statuses(server.url, config["admin_token"], started)
            with (prefix.parent / "locust_stats.csv").open() as stats_file:
                stats = list(csv.DictReader(stats_file))
            failures_path = prefix.parent / "locust_failures.csv"
            failures = list(csv.DictReader(failures_path.open())) if failures_path.exists() else []
        finally:
            stop.set()
            if holder is not None:
                holder.join(15)
                if holder.is_alive():
                    holder.kill()
            if worker is not None:
                stop_worker(worker)
            server.stop()

    print()
    print(
        f"{args.seconds} s Locust mix, {args.sessions:,} seeded sessions on PostgreSQL; one server with "
        f"{args.web_workers} gunicorn workers ({args.websockets + 64} threads each), Redis, "
        f"one Celery worker; {args.browsers} browsers, {args.api_clients} API clients, "
        f"{len(config['starters'])} starters (one session each every {args.start_every:g} s), "
        f"{args.websockets} WebSockets ({connected} connected before the start); wall {wall:.0f} s; "
        f"load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; worker RSS {', '.join(f'{m} MiB' for m in rss)}"
    )
    print(f"{'request':<40}{'requests':>9}{'fails':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'req/s':>8}")
    for row in stats:
        name = row["Name"]  # bench/locustfile.py names them with their method
        print(
            f"{name[:39]:<40}{int(row['Request Count']):>9,}{int(row['Failure Count']):>7,}"
            f"{float(row['50%']):>8.0f}{float(row['95%']):>8.0f}{float(row['99%']):>8.0f}"
            f"{float(row['Requests/s']):>8.1f}"
        )
    for failure in failures:
        print(
            f"  failure: {failure['Method']} {failure['Name']}: {failure['Error']} x{failure['Occurrences']}"
        )
    print()
    print(f"{'sessions and sockets':<48}{'value':>12}")
    messages = sockets.get("messages", {})
    rows = [
        ("sessions started", f"{len(started)}"),
        ("  completed by the end of the run", f"{at_end['completed']}"),
        (f"  completed within {args.drain:g} s more", f"{after['completed']}"),
        (
            "  still queued / running / failed after that",
            f"{after['queued']} / {after['running']} / {after['failed']}",
        ),
        ("WebSockets open at the end", f"{sockets.get('open_at_end', '?')}"),
        (
            "WebSockets closed early / failed to connect",
            f"{sockets.get('closed_early')} / {sockets.get('failed')}",
        ),
        ("WebSocket messages received (all)", f"{sum(messages.values()):,}"),
    ]
    for event, number in sorted(messages.items(), key=lambda item: -item[1]):
        rows.append((f"  {event}", f"{number:,}"))
    for name, value in rows:
        print(f"{name:<48}{value:>12}")


if __name__ == "__main__":
    main()
