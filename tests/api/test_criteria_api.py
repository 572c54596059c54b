"""GET/PUT /api/v1/config/optimization-criteria and its versions; concurrent saves."""

import multiprocessing
import threading

import pytest

from tests.helpers import make_user

URL = "/api/v1/config/optimization-criteria"


def current(caller):
    response = caller.get(URL)
    return response.get_json(), response.headers["ETag"]


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
def test_everyone_reads_the_criteria_with_an_etag(app, api_client, role):
    body, etag = current(api_client(role))
    assert body["version"] == 0 and etag == '"criteria-v0"'
    assert body["min_accuracy_retention_percent"] == 99.0


def test_reading_needs_a_token(client):
    assert client.get(URL).get_json()["error"] == "token_missing"


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_only_admins_save(app, api_client, role):
    caller = api_client(role)
    body, etag = current(caller)
    response = caller.put(URL, json=body, headers={"If-Match": etag})
    assert response.status_code == 403


def test_admin_saves_with_if_match_or_a_version_field(app, api_client):
    admin = api_client("admin")
    body, etag = current(admin)
    saved = admin.put(URL, json={**body, "threads": 2}, headers={"If-Match": etag})
    assert saved.status_code == 200
    assert saved.headers["ETag"] == '"criteria-v1"'
    assert saved.get_json()["updated_by"] == admin.user.username
    again = admin.put(URL, json={**saved.get_json(), "threads": 3})  # version 1 in the body
    assert again.get_json()["version"] == 2
    versions = admin.get(URL + "/versions").get_json()
    assert versions["current_version"] == 2
    assert [v["version"] for v in versions["versions"]] == [2, 1, 0]


def test_invalid_values_are_400_per_field(app, api_client):
    admin = api_client("admin")
    body, etag = current(admin)
    response = admin.put(
        URL, json={**body, "min_accuracy_retention_percent": 150, "threads": 0}, headers={"If-Match": etag}
    )
    assert response.status_code == 400
    assert {"min_accuracy_retention_percent", "threads"} <= set(response.get_json()["details"])


def test_stale_and_conflicting_saves_are_409(app, api_client):
    admin = api_client("admin")
    body, etag = current(admin)
    assert admin.put(URL, json=body, headers={"If-Match": etag}).status_code == 200
    stale = admin.put(URL, json=body, headers={"If-Match": etag})
    assert stale.status_code == 409
    assert stale.get_json()["details"]["current_version"] == 1
    clash = admin.put(URL, json={**body, "forbidden_techniques": ["quantization"], "version": 1})
    assert clash.status_code == 409
    assert "forbidden_techniques" in clash.get_json()["details"]


def test_a_save_without_a_version_is_428(app, api_client):
    admin = api_client("admin")
    body, _ = current(admin)
    body.pop("version")
    assert admin.put(URL, json=body).status_code == 428


def _attempts(app, worker, count, results, go=None):
    """Each attempt: read the current version, save an edit based on it."""
    from webapp.extensions import db
    from webapp.services import criteria, users
    from webapp.services.errors import ServiceError

    with app.app_context():
        admin = users.find("racer")
        if go is not None:
            go.wait(60)  # everyone starts together
        for n in range(count):
            label = f"{worker}-{n}"
            based_on = criteria.current_number()
            try:
                saved = criteria.save({**criteria.defaults(), "description": label}, based_on, admin)
                results.append(("saved", label, saved.version))
            except ServiceError as exc:
                results.append(("refused", label, exc.status))
        db.session.remove()


def _process_entry(database_url, instance, worker, count, queue, go):
    """Another process: its own app on the same database."""
    from webapp import create_app
    from webapp.extensions import db

    app = create_app(
        {
            "app": {"instance_dir": instance, "secret_key": "s" * 40},
            "database": {"url": database_url},
            "logging": {"level": "WARNING"},
        }
    )
    queue.put("ready")
    results = []
    _attempts(app, worker, count, results, go)
    with app.app_context():
        db.engine.dispose()
    queue.put(results)


@pytest.mark.slow  # two more Python processes, each building an app
def test_concurrent_saves_from_threads_and_processes_lose_nothing(app, test_database_url, tmp_path):
    from webapp.services import criteria

    make_user("racer", "admin")
    results: list = []
    context = multiprocessing.get_context("spawn")
    queue, go = context.Queue(), context.Event()
    threads = [threading.Thread(target=_attempts, args=(app, f"thread{i}", 5, results, go)) for i in range(2)]
    processes = [
        context.Process(
            target=_process_entry,
            args=(test_database_url, str(tmp_path / f"p{i}"), f"process{i}", 5, queue, go),
        )
        for i in range(2)
    ]
    for worker in (*threads, *processes):
        worker.start()
    assert [queue.get(timeout=120) for _ in processes] == ["ready", "ready"]
    go.set()
    for thread in threads:
        thread.join(120)
    for _ in processes:
        results.extend(queue.get(timeout=120))
    for process in processes:
        process.join(30)

    assert len(results) == 20
    saved = [r for r in results if r[0] == "saved"]
    refused = [r for r in results if r[0] == "refused"]
    assert all(status == 409 for _, _, status in refused)
    history = {v.version: v.document["description"] for v in criteria.versions()}
    # Every accepted save is in the history under the number it was given, once.
    assert sorted(history) == list(range(1, len(saved) + 1))
    assert {(label, version) for _, label, version in saved} == {
        (label, version) for version, label in history.items()
    }
    print(f"\n20 concurrent saves: {len(saved)} accepted, {len(refused)} refused with 409")
