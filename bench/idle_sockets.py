"""Benchmark: pages and API calls while 1,000 idle sockets try to hold the server.

    python3 bench/idle_sockets.py [--sockets 1000] [--clients 4] [--requests 200]
                                  [--sessions 10000] [--timeout 30] [--seconds 120]
                                  [--database-url URL]

Starts the real server (`flask --app webapp serve`: one gunicorn worker with the
default server.threads and [live] settings), seeded like bench/session_list.py.
Measures `/healthz` and the session list (`GET /api/v1/optimization/sessions`
with a token) from N concurrent keep-alive clients, first on a quiet server,
then while another process holds N idle sockets open on `/api/v1/ws`: they
never authenticate, and each one the server closes (refused at once, or at the
auth deadline) reconnects at once, as an attacker's would. A request that gets
no answer within --timeout counts as an error, and at that many seconds in the
percentiles. Prints p50/p95/p99 latency per scenario and what the sockets got;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import loadgen
from session_list import seed

from webapp.testing import Server

SECRET = "bench" * 8


def hold_sockets(url: str, count: int, stop, report) -> None:
    """The attacker, in a process of its own so its CPU does not count against the clients
    being measured: `count` unauthenticated sockets, each reopened as soon as it closes."""
    import websockets

    held = 0
    opened, closes, failures = 0, Counter(), Counter()  # closes by (code, reason)
    samples: list[tuple[float, int]] = []

    async def one():
        nonlocal held, opened
        while not stop.is_set():
            try:
                async with websockets.connect(
                    url, proxy=None, compression=None, ping_interval=None, open_timeout=30, close_timeout=5
                ) as ws:
                    held += 1
                    opened += 1
                    try:
                        await ws.wait_closed()
                    finally:
                        held -= 1
                    closes[(ws.close_code, ws.close_reason)] += 1
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                failures[type(exc).__name__] += 1
                await asyncio.sleep(0.1)  # the server is not taking connections: no busy loop

    async def main():
        tasks = [asyncio.create_task(one()) for _ in range(count)]
        while not stop.is_set():
            samples.append((time.time(), held))
            await asyncio.sleep(0.25)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    report.send({"opened": opened, "closes": dict(closes), "failures": dict(failures), "samples": samples})


def measure(port: int, token: str, args) -> list[tuple[str, dict]]:
    rows = []
    for name, path in (("/healthz", "/healthz"), ("session list", "/api/v1/optimization/sessions")):
        rows.append(
            (name, loadgen.run(port, token, path, args.clients, args.requests, args.timeout, args.seconds))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="per client and endpoint")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds the sockets hammer before measuring"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--seconds", type=float, default=120.0, help="longest measurement of one endpoint")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        instance = Path(tmp)
        token = seed(instance, args.database_url, args.sessions)
        env = {"OPTIDECK_APP_SECRET_KEY": SECRET, "OPTIDECK_LOGGING_LEVEL": "WARNING"}
        if args.database_url:
            env["OPTIDECK_DATABASE_URL"] = args.database_url
        server = Server(instance, env).start()
        try:
            loadgen.run(server.port, token, "/api/v1/optimization/sessions", 1, 20)  # warm up
            quiet = measure(server.port, token, args)
            stop = multiprocessing.Event()
            receiver, sender = multiprocessing.Pipe(duplex=False)
            attacker = multiprocessing.Process(
                target=hold_sockets,
                args=(f"ws://127.0.0.1:{server.port}/api/v1/ws", args.sockets, stop, sender),
            )
            attacker.start()
            time.sleep(args.settle)
            attacked = measure(server.port, token, args)
            stop.set()
            attack = receiver.recv()
            attacker.join()
        finally:
            server.stop()

    window = (attacked[0][1]["window"][0], attacked[-1][1]["window"][1])
    held = [n for at, n in attack["samples"] if window[0] <= at <= window[1]] or [0]
    seconds = attack["samples"][-1][0] - attack["samples"][0][0]
    print(
        f"one gunicorn worker, default server.threads and [live] caps; {args.clients} "
        f"keep-alive clients x {args.requests} requests per endpoint; "
        f"{args.sessions:,} sessions ({args.database_url or 'SQLite'})"
    )
    print(f"{'scenario':<44}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>8}{'errors':>8}")
    for label, rows in (("quiet", quiet), (f"{args.sockets:,} idle sockets", attacked)):
        for name, r in rows:
            print(
                f"{name + ', ' + label:<44}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}"
                f"{r['max']:>9.0f}{r['rps']:>8.0f}{sum(r['errors'].values()):>8}"
            )
    print(
        f"idle sockets: {args.sockets:,} clients, {attack['opened'] / seconds:,.0f} handshakes/s; "
        f"open at once while measured: median {statistics.median(held):.0f}, max {max(held)}"
    )
    for (code, reason), n in sorted(attack["closes"].items(), key=lambda item: -item[1]):
        print(f"  closed by the server with {code} {reason!r}: {n:,}")
    if attack["failures"]:
        print(f"  failed connects: {attack['failures']}")
    for label, rows in (("quiet", quiet), ("idle sockets", attacked)):
        for name, r in rows:
            if r["errors"]:
                print(f"  {name}, {label}: errors {r['errors']}")


if __name__ == "__main__":
    main()
