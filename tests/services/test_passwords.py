"""Passwords: stored as hashes made with the configured method, scrypt unless told otherwise."""

import pytest
from werkzeug.security import generate_password_hash

from tests.helpers import PASSWORD
from webapp.config import ConfigError, load_config
from webapp.services import users

METHOD_VARIABLE = "OPTIDECK_SECURITY_PASSWORD_HASH_METHOD"


def test_a_user_created_under_the_default_setting_gets_an_scrypt_hash(make_app):
    """The suite hashes cheaply (tests/conftest.py): does a server left at its defaults
    still hash with scrypt, for the users it creates and for names it does not know?"""
    default = load_config(environ={})["security"]["password_hash_method"]
    assert default == "scrypt"
    app = make_app(security={"password_hash_method": default})
    with app.app_context():
        user = users.create("ada", PASSWORD, "operator")
        assert user.password_hash.startswith("scrypt:")
        assert users.authenticate("ada", PASSWORD) == user
        assert users.authenticate("nobody", PASSWORD) is None
        # An unknown name is checked against this hash: the same method costs the same time.
        assert users._dummy_hash(default).startswith("scrypt:")


def test_a_new_method_applies_to_new_passwords_and_old_ones_still_work(make_app):
    with make_app().app_context():
        users.create("ada", PASSWORD, "operator")
    with make_app(security={"password_hash_method": "pbkdf2:sha256:1000"}).app_context():
        assert users.authenticate("ada", PASSWORD) is not None
        assert users.create("bob", PASSWORD, "operator").password_hash.startswith("pbkdf2:sha256:1000$")


@pytest.mark.parametrize("method", ["scrypt", "scrypt:16:8:1", "pbkdf2", "pbkdf2:sha512", "pbkdf2:sha256:1"])
def test_werkzeugs_notations_are_accepted(method):
    settings = load_config(environ={METHOD_VARIABLE: method})
    assert settings["security"]["password_hash_method"] == method


@pytest.mark.parametrize(
    "method",
    [
        "md5",
        "bcrypt",
        "scrypt:16:8",
        "scrypt:1000:8:1",
        "pbkdf2:nosuch:1",
        "pbkdf2:sha256:0",
        "pbkdf2:sha256:²",
        "pbkdf2:sha256:1:2",
    ],
)
def test_a_method_werkzeug_cannot_use_stops_start_up(method):
    with pytest.raises(ValueError):  # werkzeug's own verdict, reached before any hashing
        generate_password_hash("x", method=method)
    with pytest.raises(ConfigError, match="security.password_hash_method"):
        load_config(environ={METHOD_VARIABLE: method})
