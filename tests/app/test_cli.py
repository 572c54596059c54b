"""The flask commands deployment scripts rely on."""

import pytest

from webapp.extensions import db
from webapp.tables import ModelMetadata, OptimizationSession, User


def test_create_user_takes_the_password_from_the_environment(app, runner, monkeypatch):
    monkeypatch.setenv("OPTIDECK_PASSWORD", "a-long-enough-password")
    result = runner.invoke(args=["create-user", "Carol", "--role", "operator"])
    assert result.exit_code == 0, result.output
    user = db.session.query(User).filter_by(username="carol").one()
    assert user.role == "operator"


def test_create_user_prompts_when_no_password_is_set(app, runner, monkeypatch):
    monkeypatch.delenv("OPTIDECK_PASSWORD", raising=False)
    result = runner.invoke(
        args=["create-user", "dave", "--role", "viewer"], input="typed-password-1\ntyped-password-1\n"
    )
    assert result.exit_code == 0, result.output
    assert "typed-password-1" not in result.output


def test_create_user_explains_what_is_wrong(app, runner, monkeypatch):
    monkeypatch.setenv("OPTIDECK_PASSWORD", "short")
    result = runner.invoke(args=["create-user", "erin", "--role", "viewer"])
    assert result.exit_code != 0
    assert "password" in result.output
    bad_role = runner.invoke(args=["create-user", "erin", "--role", "god"])
    assert bad_role.exit_code != 0
    assert db.session.query(User).filter_by(username="erin").count() == 0


@pytest.mark.slow
def test_demo_fills_a_fresh_install_once(app, runner, monkeypatch):
    """Accounts, real models in every format, and sessions run to completion."""
    monkeypatch.delenv("OPTIDECK_PASSWORD", raising=False)
    first = runner.invoke(args=["demo"])
    assert first.exit_code == 0, first.output
    assert "Created administrator 'admin' with password: " in first.output
    roles = {u.username: u.role for u in db.session.query(User)}
    assert roles == {"admin": "admin", "demo-operator": "operator", "demo-viewer": "viewer"}
    db.session.expire_all()
    formats = sorted(m.format for m in db.session.query(ModelMetadata))
    assert formats == ["exported_program", "onnx", "onnx", "torchscript"]
    sessions = db.session.query(OptimizationSession).all()
    assert [s.status for s in sessions] == ["completed"] * 4
    assert all(s.results["accuracy_kind"] == "accuracy" for s in sessions)
    # The MLPs' int8 always pays. int8 static on the small CNN is slower than fp32 on some
    # CPUs (and rolled back there), so of its session only the measurement is certain.
    for session in sessions:
        assert session.results["steps"][-1]["measurement"]["score_kind"] == "accuracy"
    mlps = [s for s in sessions if s.model.name != "digits-cnn"]
    assert len(mlps) == 3
    assert all(s.size_reduction_percent > 50 for s in mlps), [s.results for s in mlps]

    again = runner.invoke(args=["demo"])
    assert again.exit_code == 0
    assert "password:" not in again.output
    assert "Demo models already exist." in again.output
    assert db.session.query(User).count() == 3
    assert db.session.query(OptimizationSession).count() == 4


def test_init_db_is_repeatable(app, runner):
    assert runner.invoke(args=["init-db"]).exit_code == 0
    assert runner.invoke(args=["init-db"]).exit_code == 0


def test_a_second_server_starting_at_once_finds_the_administrator_made(app, monkeypatch, capsys):
    """Two servers start on an empty database: both count no users; the one that loses
    the race to create the administrator carries on instead of failing to start."""
    from webapp import cli
    from webapp.services import users

    with app.app_context():
        cli.ensure_first_admin()
        monkeypatch.setattr(users, "count", lambda: 0)  # it counted before the other's commit
        cli.ensure_first_admin()
        assert "created by another process" in capsys.readouterr().out
        assert users.find("admin") is not None
