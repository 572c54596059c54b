"""Concurrent keep-alive GETs against a running server, and their latency percentiles.

Shared by the benchmarks, which import it as `loadgen`: Python puts a script's own
folder first on sys.path, so `python3 bench/x.py` finds it.
"""

from __future__ import annotations

import http.client
import math
import statistics
import threading
import time
from collections import Counter


def run(
    port: int,
    token: str,
    path: str,
    clients: int,
    requests: int,
    timeout: float = 30.0,
    seconds: float = math.inf,
) -> dict:
    """Latencies of up to `requests` GETs from each of `clients` keep-alive connections,
    for at most `seconds`. A request that fails counts as an error (by status or exception)
    and at the milliseconds it took, so one that timed out weighs in the percentiles."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        mine = []
        for _ in range(requests):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            try:
                connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                response = connection.getresponse()
                response.read()
            except OSError as exc:
                with lock:
                    errors[type(exc).__name__] += 1
                mine.append((time.perf_counter() - started) * 1000)
                # The connection's state is unknown after a failure: start a fresh one.
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                continue
            if response.status != 200:
                with lock:
                    errors[str(response.status)] += 1
            mine.append((time.perf_counter() - started) * 1000)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "p50": statistics.median(latencies),
        "p95": quantiles[94],
        "p99": quantiles[98],
        "max": max(latencies),
        "rps": len(latencies) / elapsed,
        "errors": dict(errors),
        "window": (time.time() - elapsed, time.time()),
    }
