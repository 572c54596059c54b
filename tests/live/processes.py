"""Processes the scale-out tests start: a Redis server a test may stop and start again,
and Celery workers (`flask --app webapp worker`) it may kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from webapp.testing import free_port


class OwnRedis:
    """A Redis server of one test's own (no persistence), so stopping it touches nobody."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [*command, "--appendonly", "no"], cwd=self.folder, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_worker(env: dict[str, str], folder: Path) -> subprocess.Popen:
    """A Celery worker in a process group of its own (killing the group kills its pool
    and sandboxed sessions too), once it says it is ready."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "worker.log"
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-m", "flask", "--app", "webapp", "worker"],
            cwd=folder,
            env={**env, "OPTIDECK_APP_INSTANCE_DIR": str(folder)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return process


def stop_worker(process: subprocess.Popen) -> None:
    """A warm shutdown (SIGTERM to the group), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
