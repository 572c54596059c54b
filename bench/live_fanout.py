"""Benchmark: live events to 1,000 WebSocket clients of one server process.

    python3 bench/live_fanout.py [--clients 1000] [--sessions 8] [--users 4]

Starts the real server (`flask --app webapp serve`, one gunicorn worker, a
thread per connection), opens N clients on /api/v1/ws (a fifth as an admin who
sees everything, the rest spread over operators who see their own), then runs
real optimization sessions (the demo MLP, int8) owned by the operators. Each
event carries the time it was published; the client notes when it arrived.
Prints event-to-client latency p50/p99, events lost (started and finished
events a client should have had and did not get), and the worker's memory per
connection. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import websockets

from webapp.testing import Server

PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway instance
SECRET = "bench" * 8
TERMINAL = {"session_completed", "session_failed", "session_cancelled"}


def seed(instance: Path, operators: int) -> dict[str, dict]:
    """Users with tokens and, for each operator, the demo MLP uploaded (analysed for real)."""
    from flask_migrate import upgrade

    from webapp import create_app
    from webapp.engine import demo_models
    from webapp.services import model_store, tokens, users

    app = create_app(
        {"app": {"instance_dir": str(instance), "secret_key": SECRET}, "logging": {"level": "WARNING"}}
    )
    data = demo_models.digits(image=False)
    network = demo_models.mlp(hidden=256)
    demo_models.train(network, data, epochs=4)
    files = demo_models.save(network, data.x_test, instance / "files", "mlp")
    eval_path = demo_models.save_eval_data(data, instance / "files" / "eval.npz")
    accounts = {}
    with app.app_context():
        upgrade()
        names = ["bench-admin"] + [f"bench-op{n}" for n in range(operators)]
        for name in names:
            user = users.create(name, PASSWORD, "admin" if name == "bench-admin" else "operator")
            token = tokens.create_personal(user, "bench", 1, False).access_token
            model_id = None
            if user.role != "admin":
                with files["onnx"].open("rb") as model_file, eval_path.open("rb") as eval_file:
                    model_id = model_store.add(user, model_file, "mlp.onnx", "bench-mlp", eval_file).id
            accounts[name] = {"id": user.id, "token": token, "model_id": model_id}
        app.extensions["optideck.executor"].shutdown()
    return accounts


def start_session(url: str, account: dict) -> int:
    request = urllib.request.Request(  # noqa: S310 - the bench's own server
        f"{url}/api/v1/optimization/sessions",
        method="POST",
        data=json.dumps({"model_id": account["model_id"], "techniques": ["quantization"]}).encode(),
        headers={"Authorization": f"Bearer {account['token']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.load(response)["session_id"]


def worker_stats(master_pid: int) -> dict:
    """RSS and threads of gunicorn's (only) worker process."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"])}


class Client:
    def __init__(self, username: str):
        self.username = username
        self.received: list[tuple[float, str]] = []  # (arrival, raw message)
        self.ready = asyncio.Event()

    async def run(self, url: str, token: str):
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, max_queue=None, ping_interval=None
        ) as ws:
            self.ws = ws
            await ws.recv()  # the snapshot's system_status
            self.ready.set()
            # Ends when run() closes the connection.
            async for raw in ws:
                self.received.append((time.time(), raw))  # parsed later, off the clock

    def events(self) -> list[tuple[float, dict]]:
        return [(arrived, json.loads(raw)) for arrived, raw in self.received]


async def run(args, url: str, port: int, accounts: dict, server: Server) -> dict:
    operators = [name for name in accounts if name != "bench-admin"]
    clients = []
    for n in range(args.clients):
        name = "bench-admin" if n % 5 == 0 else operators[n % len(operators)]
        clients.append(Client(name))
    before = worker_stats(server.process.pid)
    began = time.perf_counter()
    tasks = []
    for client in clients:
        tasks.append(
            asyncio.create_task(
                client.run(f"ws://127.0.0.1:{port}/api/v1/ws", accounts[client.username]["token"])
            )
        )
        await asyncio.sleep(0.002)  # a steady stream of connects, not one burst
    await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in clients)), 120)
    connect_seconds = time.perf_counter() - began
    await asyncio.sleep(2)
    connected = worker_stats(server.process.pid)

    owner_of = {}
    for n in range(args.sessions):
        name = operators[n % len(operators)]
        session_id = await asyncio.to_thread(start_session, url, accounts[name])
        owner_of[session_id] = accounts[name]["id"]

    def finished(client):
        seen = {e["data"].get("session_id") for _, e in client.events() if e["event"] in TERMINAL}
        return all(sid in seen for sid, owner in owner_of.items() if may_see(client, owner))

    def may_see(client, owner):
        return client.username == "bench-admin" or accounts[client.username]["id"] == owner

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and not all(finished(c) for c in clients[-50:]):
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)  # let the last events reach every client
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    await asyncio.gather(*tasks, return_exceptions=True)

    latencies, lost, expected, progress, resyncs = [], 0, 0, 0, 0
    for client in clients:
        seen = set()
        for arrived, event in client.events():
            if event["event"] == "resync":
                resyncs += 1
                continue
            published = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            latencies.append((arrived - published.timestamp()) * 1000)
            if event["event"] == "session_progress":
                progress += 1
            seen.add(
                (
                    event["event"] if event["event"] in TERMINAL | {"session_started"} else None,
                    event["data"].get("session_id"),
                )
            )
        for session_id, owner in owner_of.items():
            if may_see(client, owner):
                expected += 2
                lost += ("session_started", session_id) not in seen
                lost += not any((name, session_id) in seen for name in TERMINAL)
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "connect_seconds": connect_seconds,
        "before": before,
        "connected": connected,
        "messages": len(latencies),
        "progress": progress,
        "p50": statistics.median(latencies),
        "p99": quantiles[98],
        "max": max(latencies),
        "lost": lost,
        "expected": expected,
        "resyncs": resyncs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--users", type=int, default=4, help="operators owning sessions")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp)
        accounts = seed(instance, args.users)
        server = Server(
            instance,
            {
                "OPTIDECK_APP_SECRET_KEY": SECRET,
                "OPTIDECK_LOGGING_LEVEL": "WARNING",
                # A thread per open WebSocket, plus some for ordinary requests.
                "OPTIDECK_SERVER_THREADS": str(args.clients + 50),
                # Every client comes from this host, a few hundred per account: no such caps.
                "OPTIDECK_LIVE_MAX_PER_USER": "0",
                "OPTIDECK_LIVE_MAX_PER_ADDRESS": "0",
            },
        ).start()
        try:
            result = asyncio.run(run(args, server.url, server.port, accounts, server))
        finally:
            server.stop()

    rss = result["connected"]["rss_kb"] - result["before"]["rss_kb"]
    print(
        f"{args.clients} clients on /api/v1/ws, one gunicorn worker; {args.sessions} sessions "
        f"(demo MLP, int8) by {args.users} operators; a fifth of the clients are admins"
    )
    print(f"{'metric':<42}{'value':>14}")
    rows = [
        ("connect all clients (s)", f"{result['connect_seconds']:.1f}"),
        ("messages received (all clients)", f"{result['messages']:,}"),
        ("  of which session_progress", f"{result['progress']:,}"),
        ("event-to-client latency p50 (ms)", f"{result['p50']:.1f}"),
        ("event-to-client latency p99 (ms)", f"{result['p99']:.1f}"),
        ("event-to-client latency max (ms)", f"{result['max']:.1f}"),
        ("started/finished events lost", f"{result['lost']} of {result['expected']:,}"),
        ("resyncs (a client fell behind)", f"{result['resyncs']}"),
        ("worker memory per connection (KiB)", f"{rss / args.clients:.0f}"),
        ("worker threads with all connected", f"{result['connected']['threads']:,}"),
    ]
    for name, value in rows:
        print(f"{name:<42}{value:>14}")


if __name__ == "__main__":
    main()
