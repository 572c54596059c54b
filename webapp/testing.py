"""A real Optideck server in a subprocess, for tests and benchmarks, and Celery workers.

`flask --app webapp serve` (gunicorn) as an operator starts it, on a free port with
an instance folder of its own; `start_worker` runs `flask --app webapp worker`. It
lives in the package, as flask.testing does, so that tests/ and bench/ both import it
without either reaching into the other.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - localhost
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server not up after {seconds}s:\n{log.read_text()}")


class Server:
    """One server process on a fixed port and instance folder; stop() and start() again
    to restart it the way a deployment does.

    It runs in its instance folder, so that a checkout's webapp/ never shadows the one
    `python` has installed; `python` is another interpreter's path, e.g. a venv's.
    """

    def __init__(self, folder: Path, env: dict[str, str], demo: bool = False, python: str = sys.executable):
        self.folder, self.port, self.demo, self.python = folder, free_port(), demo, python
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OPTIDECK_")},
            "OPTIDECK_APP_INSTANCE_DIR": str(folder),
            "OPTIDECK_SERVER_PORT": str(self.port),
            **env,
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self) -> Server:
        command = [self.python, "-m", "flask", "--app", "webapp", "serve"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                command + (["--demo"] if self.demo else []),
                cwd=self.folder,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until_up(self.url + "/healthz", self.process, self.log)
        return self

    def stop(self, timeout: float = 15) -> float:
        """A graceful stop (SIGTERM, as systemd or Kubernetes send); returns its seconds."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - began


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
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready after 60 s:\n{log.read_text()}")
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
