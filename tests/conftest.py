"""Fixtures: an app on a fresh, migrated SQLite file per test; clients per role."""

from __future__ import annotations

import itertools
import os
import shutil

import pytest
from flask_migrate import upgrade
from sqlalchemy import create_engine, make_url, text

from tests.helpers import TEST_SECRET, AuthActions, RoleClient, api_client_for, make_user
from webapp import create_app
from webapp.extensions import db


def settings_for(instance_dir, **sections) -> dict:
    """Test overrides: a private instance folder, a fixed key, a brisk executor, cheap
    password hashes, plus `sections`."""
    config = {
        "app": {"instance_dir": str(instance_dir), "secret_key": TEST_SECRET},
        # Timing rounds stop at 15 after a fifth of a second: sessions and uploads by the
        # hundred would otherwise spend minutes timing (tests/engine/test_timing.py uses
        # the default).
        "executor": {"poll_seconds": 0.1, "latency_seconds": 0.2},
        # Hundreds of tests create users and log in: scrypt would cost them minutes.
        # tests/services/test_passwords.py checks the default is still scrypt.
        "security": {"password_hash_method": "pbkdf2:sha256:1"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


# A test using one of these is marked `slow` (make test-fast leaves it out): demo_files
# trains models, and the tests using it upload them, each upload analysed by a sandboxed
# worker; live and server start servers. Modules that are slow for other reasons say so
# with their own `pytestmark`.
SLOW_FIXTURES = {"demo_files", "live", "server"}


# Set to a PostgreSQL URL (any database on the server) to run the suite on
# PostgreSQL instead of SQLite: each test then gets a database cloned from a
# migrated template. .ci/run does both.
PG_URL = os.environ.get("OPTIDECK_TEST_DATABASE_URL", "")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    if PG_URL:
        # A test that opens no database (the engine, the sandbox, the wheel) would run the
        # same on PostgreSQL: it ran on SQLite already.
        unused = [item for item in items if "test_database_url" not in item.fixturenames]
        items[:] = [item for item in items if "test_database_url" in item.fixturenames]
        config.hook.pytest_deselected(items=unused)


_pg_names = itertools.count()


def _pg_admin_engine():
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory):
    """A database migrated to head once; each test gets a copy (migrating is slow)."""
    folder = tmp_path_factory.mktemp("template")
    if PG_URL:
        template = f"optideck_tmpl_{os.getpid()}"
        admin = _pg_admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{template}"'))
            conn.execute(text(f'CREATE DATABASE "{template}"'))
        url = make_url(PG_URL).set(database=template).render_as_string(hide_password=False)
        app = create_app(settings_for(folder, database={"url": url}))
    else:
        template = folder / "optideck.db"
        app = create_app(settings_for(folder))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    yield template
    if PG_URL:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def test_database_url(migrated_db, tmp_path):
    """A fresh copy of the migrated database for this test: its SQLAlchemy URL."""
    if not PG_URL:
        target = tmp_path / "instance" / "optideck.db"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(migrated_db, target)
        yield f"sqlite:///{target}"
        return
    name = f"optideck_t_{os.getpid()}_{next(_pg_names)}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_db}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sandbox_work_dir(tmp_path_factory):
    """One sandbox scratch folder for every app of the run. An app probes its sandbox once
    per process and scratch folder (a worker started, ~0.4 s); each job still gets its
    own folder inside, as on a server."""
    return tmp_path_factory.mktemp("sandbox")


@pytest.fixture
def make_app(test_database_url, tmp_path, sandbox_work_dir):
    """Build an app on this test's database, with extra settings."""
    built = []

    def build(**sections):
        instance = tmp_path / "instance"
        instance.mkdir(exist_ok=True)
        sections.setdefault("database", {}).setdefault("url", test_database_url)
        sections.setdefault("sandbox", {}).setdefault("work_dir", str(sandbox_work_dir))
        app = create_app(settings_for(instance, **sections))
        app.config["TESTING"] = True
        built.append(app)
        return app

    yield build
    # Stop background workers, then close every pooled connection before the
    # test's database is dropped.
    for app in built:
        app.extensions["optideck.executor"].shutdown()
        notifications = app.extensions["optideck.notifications"]
        if hasattr(notifications, "stop"):  # the Redis fan-out's listener thread
            notifications.stop()
        error_rate = app.extensions["optideck.error_rate"]
        if hasattr(error_rate, "stop"):  # the shared error-rate window's flush thread
            error_rate.stop()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory):
    """Real models trained on the digits data, in every format, with evaluation data."""
    from webapp.engine import demo_models

    folder = tmp_path_factory.mktemp("demo-models")
    data = demo_models.digits(image=False)
    mlp = demo_models.mlp(hidden=256)
    accuracy = demo_models.train(mlp, data, epochs=6)
    files = demo_models.save(mlp, data.x_test, folder, "mlp")
    files["eval"] = demo_models.save_eval_data(data, folder / "mlp_eval.npz")
    files["eval_unlabelled"] = demo_models.save_eval_data(data, folder / "mlp_x.npz", labels=False)
    files["accuracy"] = accuracy
    return files


@pytest.fixture
def app(make_app):
    app = make_app()
    with app.app_context():
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def auth(client):
    return AuthActions(client)


def _logged_in(app, role: str) -> RoleClient:
    user = make_user(f"{role}-user", role)
    client = app.test_client()
    actions = AuthActions(client)
    response = actions.login(user.username)
    assert response.status_code == 302, response.get_data(as_text=True)
    return RoleClient(client, user, actions)


@pytest.fixture
def admin(app):
    return _logged_in(app, "admin")


@pytest.fixture
def operator(app):
    return _logged_in(app, "operator")


@pytest.fixture
def viewer(app):
    return _logged_in(app, "viewer")


@pytest.fixture
def api_client(app):
    """api_client(role, read_only=False): a client sending a fresh token of a new user
    (named api-ROLE-N, N counting the clients this test made)."""
    made = itertools.count()

    def build(role: str = "operator", read_only: bool = False):
        return api_client_for(app, f"api-{role}-{next(made)}", role, read_only)

    return build


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of this test's own (nothing another test cached can answer), which it
    may stop and start again."""
    from tests.live.processes import OwnRedis

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()
