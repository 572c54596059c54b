"""Fixtures: an app on a fresh, migrated SQLite file per test; clients per role."""

from __future__ import annotations

import itertools
import os
import re
import shutil
from dataclasses import dataclass

import pytest
from flask_migrate import upgrade
from sqlalchemy import create_engine, make_url, text

from webapp import create_app
from webapp.extensions import db
from webapp.services import tokens, users

PASSWORD = "correct-horse-battery"
TEST_SECRET = "test-secret-key-" + "x" * 32


def settings_for(instance_dir, **sections) -> dict:
    """Test overrides: a private instance folder, a fixed key, a brisk executor, plus `sections`."""
    config = {
        "app": {"instance_dir": str(instance_dir), "secret_key": TEST_SECRET},
        "executor": {"poll_seconds": 0.1},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


# Set to a PostgreSQL URL (any database on the server) to run the suite on
# PostgreSQL instead of SQLite: each test then gets a database cloned from a
# migrated template. .ci/run does both.
PG_URL = os.environ.get("OPTIDECK_TEST_DATABASE_URL", "")
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


@pytest.fixture
def make_app(test_database_url, tmp_path):
    """Build an app on this test's database, with extra settings."""
    built = []

    def build(**sections):
        instance = tmp_path / "instance"
        instance.mkdir(exist_ok=True)
        sections.setdefault("database", {}).setdefault("url", test_database_url)
        app = create_app(settings_for(instance, **sections))
        app.config["TESTING"] = True
        built.append(app)
        return app

    yield build
    # Stop background workers, then close every pooled connection before the
    # test's database is dropped.
    for app in built:
        app.extensions["optideck.executor"].shutdown()
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


def make_user(username: str, role: str = "operator", password: str = PASSWORD):
    return users.create(username, password, role)


CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(client, path: str) -> str:
    page = client.get(path)
    match = CSRF_FIELD.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


class AuthActions:
    def __init__(self, client):
        self._client = client

    def login(self, username: str, password: str = PASSWORD):
        token = csrf_from(self._client, "/login")
        return self._client.post(
            "/login", data={"username": username, "password": password, "csrf_token": token}
        )

    def logout(self):
        token = csrf_from(self._client, "/dashboard")
        return self._client.post("/logout", data={"csrf_token": token})

    def post(self, path: str, data: dict, page: str | None = None):
        """Post a form the way a browser does: with the CSRF token of the page."""
        token = csrf_from(self._client, page or path)
        return self._client.post(path, data={**data, "csrf_token": token})


@pytest.fixture
def auth(client):
    return AuthActions(client)


@dataclass
class RoleClient:
    client: object
    user: object
    auth: AuthActions


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


@dataclass
class ApiClient:
    client: object
    user: object
    token: str

    def _headers(self, headers):
        return {"Authorization": f"Bearer {self.token}", **(headers or {})}

    def get(self, path, headers=None, **kwargs):
        return self.client.get(path, headers=self._headers(headers), **kwargs)

    def post(self, path, headers=None, **kwargs):
        return self.client.post(path, headers=self._headers(headers), **kwargs)

    def put(self, path, headers=None, **kwargs):
        return self.client.put(path, headers=self._headers(headers), **kwargs)

    def delete(self, path, headers=None, **kwargs):
        return self.client.delete(path, headers=self._headers(headers), **kwargs)


@pytest.fixture
def api_client(app):
    """api_client(role, read_only=False): a client sending a fresh token of a new user."""
    made = {}

    def build(role: str = "operator", read_only: bool = False) -> ApiClient:
        name = f"api-{role}-{len(made)}"
        user = make_user(name, role)
        issued = tokens.create_personal(user, "tests", 30, read_only)
        made[name] = ApiClient(app.test_client(), user, issued.access_token)
        return made[name]

    return build
