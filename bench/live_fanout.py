"""Benchmark: live events to 1,000 WebSocket clients of one server process, or to
5,000 spread over two processes that fan out over Redis.

    python3 bench/live_fanout.py [--clients 1000] [--sessions 8] [--users 4]
                                 [--processes 1] [--client-processes 1] [--connect-rate 500]
                                 [--database-url URL --redis-url URL [--backend celery|local]]
                                 [--worker-class gthread|gevent] [--split-cpus]

Scaled out (the issue's run; create the database first, and again for every run:
`dropdb bench_fanout; createdb bench_fanout`):

    python3 bench/live_fanout.py --clients 5000 --processes 2 --client-processes 4 --connect-rate 200 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_fanout \\
        --redis-url redis://127.0.0.1:6379/5 --backend celery --worker-class gevent [--split-cpus]

Starts the real server (`flask --app webapp serve`, one gunicorn worker, a
thread per connection, or with --worker-class gevent a greenlet each), or with
--processes N that many servers sharing one database, model store and Redis (its
database FLUSHED first), opens N clients on /api/v1/ws spread evenly over the
servers (a fifth as an admin who sees everything, the rest spread over operators
who see their own), then runs real optimization sessions (the demo MLP, int8)
owned by the operators, all started through the first server, so events reach
the other servers' clients only over Redis. Sessions run on the servers' own
executors (--backend local) or on one Celery worker (`flask --app webapp
worker`; --backend celery). The clients run in --client-processes OS processes
(uvloop and picows each), so one event loop is not the bottleneck. Each event
carries the time it was published; the client notes when it arrived. Prints
event-to-client latency p50/p99/max, events lost (started and finished events a
client should have had and did not get), resyncs, the servers' and the clients'
CPU, the share of events each server handed to all its sockets within 200 ms of
the publish (the servers' own histogram, optideck_event_delivery_seconds: the
clients' reading left out), and each server's memory per connection. With
--split-cpus the servers run on the first CPU and the clients and the worker on
the others. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

import uvloop
from picows import WSCloseCode, WSError, WSListener, WSMsgType, ws_connect
from prometheus_client.parser import text_string_to_metric_families

from webapp.testing import Server, start_worker, stop_worker

PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway instance
SECRET = "bench" * 8
TERMINAL = {"session_completed", "session_failed", "session_cancelled"}
TERMINAL_BYTES = tuple(f'"{name}"'.encode() for name in TERMINAL)


def seed(instance: Path, operators: int, database_url: str | None = None) -> dict[str, dict]:
    """Users with tokens and, for each operator, the demo MLP uploaded (analysed for real),
    in <instance>/storage, the model store every server and worker is given."""
    from flask_migrate import upgrade

    from webapp import create_app
    from webapp.engine import demo_models
    from webapp.services import model_store, tokens, users

    overrides = {
        "app": {"instance_dir": str(instance), "secret_key": SECRET},
        "logging": {"level": "WARNING"},
        "storage": {"dir": str(instance / "storage")},
    }
    if database_url:
        overrides["database"] = {"url": database_url}
    app = create_app(overrides)
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
    # A server holding thousands of sockets may take long to answer (what this measures).
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
        return json.load(response)["session_id"]


def worker_stats(master_pid: int) -> dict:
    """RSS, threads and CPU seconds so far of a server's (only) gunicorn worker process."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    # /proc/<pid>/stat: utime and stime are the 14th and 15th fields, after "(comm)".
    stat = Path(f"/proc/{children[0]}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]), "cpu_s": cpu}


def may_see(username: str, accounts: dict, owner: int) -> bool:
    return username == "bench-admin" or accounts[username]["id"] == owner


class Client(WSListener):
    """One connection (picows: frames parsed in C, so 5,000 clients spend their CPU on
    reading events, not on a Python protocol stack; on one host that CPU is the servers'
    too). Notes each message's arrival time and bytes; parsed later, off the clock."""

    def __init__(self, username: str):
        super().__init__()
        self.username = username
        self.received: list[tuple[float, bytes]] = []
        self.finished: set[int] = set()  # sessions whose terminal event arrived
        self.ready = asyncio.Event()
        self.transport = None
        self.dropped: str | None = None
        self.closing = False  # the bench closes it: what follows is no drop

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            raw = frame.get_payload_as_bytes()
            if not self.ready.is_set():
                self.ready.set()  # the snapshot's system_status
                return
            self.received.append((time.time(), raw))
            if any(name in raw for name in TERMINAL_BYTES):
                self.finished.add(json.loads(raw)["data"].get("session_id"))
        elif frame.msg_type == WSMsgType.CLOSE:
            if not self.closing:
                self.dropped = f"closed by the server: {frame.get_close_code()}"
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        if not self.closing and self.dropped is None:
            self.dropped = "disconnected"
        self.ready.set()

    async def run(self, url: str, token: str):
        try:
            self.transport, _ = await ws_connect(
                lambda: self,
                url,
                extra_headers={"Authorization": f"Bearer {token}"},
                websocket_handshake_timeout=300,
            )
        except (OSError, TimeoutError, WSError) as exc:
            self.dropped = f"{type(exc).__name__}: {exc}"[:80]
            self.ready.set()

    async def close(self):
        if self.transport is not None and not self.transport.is_disconnected():
            self.transport.send_close(WSCloseCode.OK)
            await asyncio.wait_for(self.transport.wait_disconnected(), 10)

    def events(self) -> list[tuple[float, dict]]:
        return [(arrived, json.loads(raw)) for arrived, raw in self.received]


def tally(clients: list[Client], accounts: dict, owner_of: dict[int, int]) -> dict:
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
            if may_see(client.username, accounts, owner):
                expected += 2
                lost += ("session_started", session_id) not in seen
                lost += not any((name, session_id) in seen for name in TERMINAL)
    return {
        "latencies": latencies,
        "lost": lost,
        "expected": expected,
        "progress": progress,
        "resyncs": resyncs,
        "dropped": Counter(c.dropped for c in clients if c.dropped),
    }


def client_process(share: list[tuple[str, str]], accounts: dict, timeout: float, pause: float, conn) -> None:
    """One OS process's clients: (username, ws url) each. Reports ("ready", connect seconds),
    then waits for the sessions' owners, then reports its tally."""
    raise_open_files(len(share) + 200)

    async def main():
        clients = [Client(username) for username, _ in share]
        began = time.perf_counter()
        tasks = []
        for client, (_, url) in zip(clients, share, strict=True):
            tasks.append(asyncio.create_task(client.run(url, accounts[client.username]["token"])))
            await asyncio.sleep(pause)  # a steady stream of connects, not one burst
        waiting = asyncio.gather(*(c.ready.wait() for c in clients))
        await asyncio.wait_for(waiting, 300 + len(clients) * pause)
        conn.send(("ready", time.perf_counter() - began))
        cpu_connected = cpu_seconds()
        owner_of = await asyncio.to_thread(conn.recv)

        def done(client):
            visible = [sid for sid, owner in owner_of.items() if may_see(client.username, accounts, owner)]
            return all(sid in client.finished for sid in visible)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(done(c) for c in clients if not c.dropped):
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # let the last events reach every client
        for client in clients:
            client.closing = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients if not c.dropped), return_exceptions=True)
        # Reading and timestamping the messages: this share of the machine was not the servers'.
        conn.send(("tally", tally(clients, accounts, owner_of) | {"cpu_s": cpu_seconds() - cpu_connected}))

    uvloop.run(main())  # libuv's loop: a read callback per socket costs less than asyncio's


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def delivery(servers: list[Server], token: str) -> tuple[float, float]:
    """From the servers' own histogram (optideck_event_delivery_seconds): how many event
    hand-offs there were, and the share done within 200 ms of the publish, the clients'
    reading left out."""
    within = total = 0.0
    for server in servers:
        request = urllib.request.Request(  # noqa: S310 - the bench's own server
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "optideck_event_delivery_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels["le"] == "0.2":
                    within += sample.value
                elif sample.name.endswith("_count"):
                    total += sample.value
    return total, within / total if total else 0.0


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"ulimit -n allows {hard} open files, {needed} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run(args, accounts: dict, servers: list[Server]) -> dict:
    operators = [name for name in accounts if name != "bench-admin"]
    # Client n: an admin every fifth, on server n % len(servers), in OS process n % k.
    shares: list[list[tuple[str, str]]] = [[] for _ in range(args.client_processes)]
    per_server = [0] * len(servers)
    for n in range(args.clients):
        name = "bench-admin" if n % 5 == 0 else operators[n % len(operators)]
        server = servers[n % len(servers)]
        per_server[n % len(servers)] += 1
        shares[n % args.client_processes].append((name, f"ws://127.0.0.1:{server.port}/api/v1/ws"))
    before = [worker_stats(s.process.pid) for s in servers]
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    for share in shares:
        mine, theirs = context.Pipe()
        child = context.Process(
            target=client_process,
            args=(share, accounts, args.timeout, args.client_processes / args.connect_rate, theirs),
            daemon=True,
        )
        child.start()
        pipes.append(mine)
        children.append(child)
    try:
        connect_seconds = 0.0
        for pipe in pipes:
            if not pipe.poll(360 + args.clients / args.connect_rate):
                raise RuntimeError("a client process did not connect its clients in time")
            connect_seconds = max(connect_seconds, pipe.recv()[1])
        time.sleep(2)
        connected = [worker_stats(s.process.pid) for s in servers]

        owner_of = {}
        for n in range(args.sessions):
            name = operators[n % len(operators)]
            session_id = start_session(servers[0].url, accounts[name])  # through the first server only
            owner_of[session_id] = accounts[name]["id"]
        for pipe in pipes:
            pipe.send(owner_of)
        tallies = []
        for pipe in pipes:
            if not pipe.poll(args.timeout + 120):
                raise RuntimeError("a client process did not report")
            tallies.append(pipe.recv()[1])
        finished = [worker_stats(s.process.pid) for s in servers]
        handoffs, within_200ms = delivery(servers, accounts["bench-admin"]["token"])
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
    latencies = [ms for t in tallies for ms in t["latencies"]]
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "connect_seconds": connect_seconds,
        "per_server": per_server,
        "before": before,
        "connected": connected,
        "events_cpu_s": sum(f["cpu_s"] - c["cpu_s"] for f, c in zip(finished, connected, strict=True)),
        "messages": len(latencies),
        "progress": sum(t["progress"] for t in tallies),
        "p50": statistics.median(latencies),
        "p99": quantiles[98],
        "max": max(latencies),
        "lost": sum(t["lost"] for t in tallies),
        "expected": sum(t["expected"] for t in tallies),
        "resyncs": sum(t["resyncs"] for t in tallies),
        "dropped": sum((t["dropped"] for t in tallies), Counter()),
        "clients_cpu_s": sum(t["cpu_s"] for t in tallies),
        "handoffs": handoffs,
        "within_200ms": within_200ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--users", type=int, default=4, help="operators owning sessions")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--processes", type=int, default=1, help="servers (one gunicorn worker each)")
    parser.add_argument("--client-processes", type=int, default=1, help="OS processes running the clients")
    parser.add_argument("--connect-rate", type=float, default=500, help="new connections per second, in all")
    parser.add_argument("--database-url", default=None, help="shared by the servers (needed for > 1)")
    parser.add_argument("--redis-url", default=None, help="fan-out and broker (FLUSHED; needed for > 1)")
    parser.add_argument("--backend", choices=["local", "celery"], default="local", help="who runs sessions")
    parser.add_argument(
        "--worker-class", choices=["gthread", "gevent"], default="gthread", help="server.worker_class"
    )
    parser.add_argument(
        "--split-cpus",
        action="store_true",
        help="servers on the first CPU, the clients and the Celery worker on the others "
        "(the nearest a one-host run comes to clients on other machines)",
    )
    args = parser.parse_args()
    if (args.processes > 1 or args.backend == "celery") and not (args.database_url and args.redis_url):
        parser.error("--processes > 1 and --backend celery need --database-url and --redis-url")
    per_server = -(-args.clients // args.processes)
    raise_open_files(args.clients + 500)

    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp)
        accounts = seed(instance, args.users, args.database_url)
        env = {
            "OPTIDECK_APP_SECRET_KEY": SECRET,
            "OPTIDECK_LOGGING_LEVEL": "WARNING",
            "OPTIDECK_STORAGE_DIR": str(instance / "storage"),
            # A thread per open WebSocket, plus some for ordinary requests.
            "OPTIDECK_SERVER_WORKER_CLASS": args.worker_class,
            "OPTIDECK_SERVER_THREADS": str(per_server + 50),
            "OPTIDECK_SERVER_CONNECTIONS": str(per_server + 50),
            # Every client comes from this host, a few hundred per account: no such caps.
            "OPTIDECK_LIVE_MAX_PER_USER": "0",
            "OPTIDECK_LIVE_MAX_PER_ADDRESS": "0",
            "OPTIDECK_EXECUTOR_BACKEND": args.backend,
        }
        if args.database_url:
            env["OPTIDECK_DATABASE_URL"] = args.database_url
        if args.redis_url:
            import redis

            redis.Redis.from_url(args.redis_url).flushdb()
            env["OPTIDECK_REDIS_URL"] = args.redis_url
        servers: list[Server] = []
        worker = None
        cpus = sorted(os.sched_getaffinity(0))
        if args.split_cpus and len(cpus) < 2:
            parser.error("--split-cpus needs at least 2 CPUs")
        try:
            if args.split_cpus:
                os.sched_setaffinity(0, cpus[:1])  # the servers inherit it ...
            for n in range(args.processes):
                folder = instance / f"web{n}"
                folder.mkdir()
                servers.append(Server(folder, env).start())
            if args.split_cpus:
                os.sched_setaffinity(0, cpus[1:])  # ... what starts after them, this
            if args.backend == "celery":
                worker = start_worker(servers[0].env, instance / "celery")
            started = time.perf_counter()
            result = run(args, accounts, servers)
            wall = time.perf_counter() - started
        finally:
            if worker is not None:
                stop_worker(worker)
            for server in servers:
                server.stop()

    runner = "one Celery worker" if args.backend == "celery" else "each server's own executor"
    print(
        f"{args.clients} clients on /api/v1/ws over {args.processes} server process(es) "
        f"(one {args.worker_class} gunicorn worker each; "
        f"{' + '.join(map(str, result['per_server']))} clients), "
        f"in {args.client_processes} client process(es); {args.sessions} sessions (demo MLP, int8) "
        f"by {args.users} operators, started through the first server, run by {runner}; "
        f"a fifth of the clients are admins; {wall:.0f} s from first connect to last tally"
        + ("; servers on CPU 0, clients and worker on the others" if args.split_cpus else "")
    )
    print(f"{'metric':<48}{'value':>14}")
    rows = [
        ("connect all clients (s)", f"{result['connect_seconds']:.1f}"),
        ("messages received (all clients)", f"{result['messages']:,}"),
        ("  of which session_progress", f"{result['progress']:,}"),
        ("event-to-client latency p50 (ms)", f"{result['p50']:.1f}"),
        ("event-to-client latency p99 (ms)", f"{result['p99']:.1f}"),
        ("event-to-client latency max (ms)", f"{result['max']:.1f}"),
        ("started/finished events lost", f"{result['lost']} of {result['expected']:,}"),
        ("resyncs (a client fell behind)", f"{result['resyncs']}"),
        ("clients dropped (never connected, closed early)", f"{sum(result['dropped'].values())}"),
        # From the last connect to the last tally: the events' fan-out, the sessions'
        # requests, idle wake-ups. Per message: the servers' cost of one delivery.
        ("servers' CPU while sessions ran (s)", f"{result['events_cpu_s']:.1f}"),
        ("  per message received (us)", f"{result['events_cpu_s'] / result['messages'] * 1e6:.0f}"),
        ("clients' CPU meanwhile (s)", f"{result['clients_cpu_s']:.1f}"),
        # Publish to hand-off in each server (histogram): what the servers alone add.
        ("events handed to all of a server's sockets", f"{result['handoffs']:,.0f}"),
        ("  of which within 200 ms of the publish (%)", f"{result['within_200ms'] * 100:.1f}"),
    ]
    for n, (before, connected) in enumerate(zip(result["before"], result["connected"], strict=True)):
        rss = connected["rss_kb"] - before["rss_kb"]
        rows.append((f"server {n}: memory per connection (KiB)", f"{rss / result['per_server'][n]:.0f}"))
        rows.append((f"server {n}: worker RSS, all connected (MiB)", f"{connected['rss_kb'] / 1024:.0f}"))
        rows.append((f"server {n}: worker threads, all connected", f"{connected['threads']:,}"))
    for name, value in rows:
        print(f"{name:<48}{value:>14}")
    for reason, number in result["dropped"].most_common(5):
        print(f"  dropped: {reason} x{number}")


if __name__ == "__main__":
    main()
