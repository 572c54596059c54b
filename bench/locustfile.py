"""The Locust users of bench/mix.py, which seeds, starts the servers and runs this file:

    locust -f bench/locustfile.py --headless ...   (with BENCH_MIX_CONFIG naming mix.py's JSON)

Run bench/mix.py rather than this file by hand; its docstring has the command. Three
kinds of user, in fixed numbers set from the config: browsers (log in through the
/login form, then the dashboard, filtered session lists and session pages), API
clients (the session list with a bearer token) and starters (a real session, the
demo MLP with int8 quantization, every few seconds).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from locust import HttpUser, between, constant_pacing, events, task

CONFIG = (
    json.loads(Path(os.environ["BENCH_MIX_CONFIG"]).read_text()) if "BENCH_MIX_CONFIG" in os.environ else {}
)
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FILTERS = [
    "?status=completed",
    "?status=failed",
    "?status=completed&status=failed",
    "?status=queued",
    "?sort=size",
    "?sort=speed&order=asc",
    "?q=model-3",
]
started: list[int] = []  # session ids, read by mix.py from the log line at the end


class Browser(HttpUser):
    """A person: logs in once, then reads pages, a second or two apart."""

    fixed_count = CONFIG.get("browsers", 50)
    wait_time = between(1, 3)

    def on_start(self):
        self.account = random.choice(CONFIG["browser_accounts"])  # noqa: S311 - load, not secrets
        page = self.client.get("/login", name="GET /login")
        token = CSRF.search(page.text)
        with self.client.post(
            "/login",
            data={
                "username": self.account["username"],
                "password": CONFIG["password"],
                "csrf_token": token.group(1) if token else "",
            },
            allow_redirects=False,
            name="POST /login",
            catch_response=True,
        ) as response:
            if response.status_code != 302:
                response.failure(f"login answered {response.status_code}")

    @task(3)
    def dashboard(self):
        self.client.get("/dashboard", name="GET /dashboard")

    @task(4)
    def filtered_list(self):
        self.client.get("/sessions" + random.choice(FILTERS), name="GET /sessions?<filters>")  # noqa: S311

    @task(1)
    def first_page(self):
        self.client.get("/sessions", name="GET /sessions")

    @task(4)
    def session_page(self):
        session_id = random.choice(self.account["session_ids"])  # noqa: S311
        self.client.get(f"/sessions/{session_id}", name="GET /sessions/<id>")


class ApiClient(HttpUser):
    """A script polling the session list with a personal token."""

    fixed_count = CONFIG.get("api_clients", 10)
    wait_time = between(0.5, 1.5)

    def on_start(self):
        self.headers = {"Authorization": f"Bearer {random.choice(CONFIG['api_tokens'])}"}  # noqa: S311

    @task(3)
    def first_page(self):
        self.client.get("/api/v1/optimization/sessions", headers=self.headers, name="API list")

    @task(2)
    def filtered(self):
        self.client.get(
            "/api/v1/optimization/sessions?status=completed&sort=size",
            headers=self.headers,
            name="API list ?status=completed&sort=size",
        )

    @task(1)
    def stats(self):
        self.client.get("/api/v1/dashboard/stats", headers=self.headers, name="API dashboard stats")


class Starter(HttpUser):
    """An operator starting a real session (their own demo MLP, int8) every few seconds."""

    fixed_count = len(CONFIG.get("starters", []))
    wait_time = constant_pacing(CONFIG.get("start_every_seconds", 12))

    def on_start(self):
        self.account = CONFIG["starters"][Starter.next_index()]

    _index = -1

    @classmethod
    def next_index(cls) -> int:
        cls._index += 1
        return cls._index % len(CONFIG["starters"])

    @task
    def start_session(self):
        with self.client.post(
            "/api/v1/optimization/sessions",
            json={"model_id": self.account["model_id"], "techniques": ["quantization"]},
            headers={"Authorization": f"Bearer {self.account['token']}"},
            name="API start session",
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"start answered {response.status_code}")
            else:
                started.append(response.json()["session_id"])


@events.quitting.add_listener
def report_started(environment, **kwargs):
    print("BENCH_MIX_STARTED " + json.dumps(started), flush=True)
