"""Settings: defaults, file and environment overrides, and clear errors."""

import pytest

from webapp import create_app
from webapp.config import ConfigError, ensure_secret_key, load_config, masked


def test_defaults_come_from_the_shipped_file():
    settings = load_config(environ={})
    assert settings["server"]["port"] == 5000
    assert settings["database"]["url"].startswith("sqlite:///")
    assert settings["database"]["url"].endswith("instance/optideck.db")


def test_environment_overrides_with_the_settings_type(tmp_path):
    settings = load_config(
        environ={
            "OPTIDECK_SERVER_PORT": "8123",
            "OPTIDECK_LOGGING_JSON": "yes",
            "OPTIDECK_CORS_ORIGINS": "https://a.example, https://b.example",
            "OPTIDECK_DATABASE_URL": "postgresql+psycopg://u@h/db",
            "OPTIDECK_STORAGE_DIR": str(tmp_path / "store"),
        }
    )
    assert settings["server"]["port"] == 8123
    assert settings["logging"]["json"] is True
    assert settings["cors"]["origins"] == ["https://a.example", "https://b.example"]
    assert settings["database"]["url"] == "postgresql+psycopg://u@h/db"
    assert settings["storage"]["dir"] == str(tmp_path / "store")


def test_config_file_then_environment(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[server]\nport = 7000\nthreads = 8\n[app]\ninstance_dir = "data"\n')
    settings = load_config(environ={"OPTIDECK_CONFIG": str(path), "OPTIDECK_SERVER_PORT": "7001"})
    assert settings["server"]["port"] == 7001
    assert settings["server"]["threads"] == 8
    # Relative paths in a config file are taken from that file's folder.
    assert settings["app"]["instance_dir"] == str(tmp_path / "data")


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OPTIDECK_SERVER_PORT": "eighty"}, "OPTIDECK_SERVER_PORT"),
        ({"OPTIDECK_LOGGING_JSON": "maybe"}, "OPTIDECK_LOGGING_JSON"),
        ({"OPTIDECK_SERVER_PORTS": "80"}, "OPTIDECK_SERVER_PORTS"),
        ({"OPTIDECK_SERVER_PORT": "70000"}, "server.port"),
        ({"OPTIDECK_LOGGING_LEVEL": "LOUD"}, "logging.level"),
        ({"OPTIDECK_CORS_ORIGINS": "*"}, "cors.origins"),
        ({"OPTIDECK_SECURITY_LOGIN_RATE_LIMIT": "lots"}, "security.login_rate_limit"),
        ({"OPTIDECK_SERVER_WORKER_CLASS": "eventlet"}, "server.worker_class"),
        ({"OPTIDECK_SERVER_CONNECTIONS": "0"}, "server.connections"),
        ({"OPTIDECK_SERVER_KEEPALIVE": "-1"}, "server.keepalive"),
        # Under gevent the sockets' capacity is server.connections, not server.threads.
        (
            {"OPTIDECK_SERVER_WORKER_CLASS": "gevent", "OPTIDECK_SERVER_CONNECTIONS": "4"},
            "less than server.connections (4)",
        ),
    ],
)
def test_bad_environment_values_name_the_setting(environ, named):
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert named in caught.value.message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[server]\nport = "5000"\n', "server.port"),
        ("[server]\nworkers = true\n", "server.workers"),
        ("[security]\nsession_cookie_secure = 1\n", "security.session_cookie_secure"),
        ("[cors]\norigins = [1]\n", "cors.origins"),
        ("[server]\nprot = 1\n", "server.prot"),
        ("[nosuch]\nkey = 1\n", "[nosuch]"),
        ("[server\nport = 1\n", "not valid TOML"),
    ],
)
def test_config_file_of_the_wrong_type_names_the_key(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"OPTIDECK_CONFIG": str(path)})
    assert named in caught.value.message


def test_a_config_error_stops_start_up_with_the_message_alone(tmp_path, monkeypatch):
    """create_app raises a SystemExit whose text is the message: no traceback."""
    monkeypatch.setenv("OPTIDECK_SERVER_THREADS", "many")
    with pytest.raises(SystemExit) as caught:
        create_app({"app": {"instance_dir": str(tmp_path)}})
    assert str(caught.value.code).startswith("Optideck configuration error: OPTIDECK_SERVER_THREADS")


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"OPTIDECK_CONFIG": str(tmp_path / "none.toml")})
    assert "none.toml" in caught.value.message


def test_secret_key_is_generated_once_and_kept(tmp_path):
    settings = load_config(overrides={"app": {"instance_dir": str(tmp_path)}}, environ={})
    first = ensure_secret_key(settings)
    assert len(first) >= 32
    assert ensure_secret_key(settings) == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_masked_settings_hide_secrets_but_not_the_rest(tmp_path):
    settings = load_config(
        environ={
            "OPTIDECK_SECRET_KEY": "s3cr3t-value",
            "OPTIDECK_ADMIN_PASSWORD": "hunter2hunter2",
            "OPTIDECK_DATABASE_URL": "postgresql+psycopg://app:dbpass@db.local:5432/optideck",
            "OPTIDECK_REDIS_URL": "redis://:redispass@127.0.0.1:6379/0",
        }
    )
    shown = repr(masked(settings))
    for secret in ("s3cr3t-value", "hunter2hunter2", "dbpass", "redispass"):
        assert secret not in shown
    assert "db.local:5432" in shown
    assert masked(settings)["security"]["access_token_minutes"] == 60


def test_config_comments_say_what_the_technique_registry_says():
    """config.toml's comments on technique settings name the registry's techniques, choices
    and ranges, so they cannot drift from what the server accepts."""
    from webapp.config import DEFAULTS_FILE
    from webapp.engine.techniques import TECHNIQUES, criteria_params

    comments: dict[str, str] = {}
    above: list[str] = []
    for line in DEFAULTS_FILE.read_text().splitlines():
        if line.startswith("#"):
            above.append(line)
        elif "=" in line:
            comments[line.split("=")[0].strip()] = " ".join(above)
            above = []
        else:
            above = []
    listed = "(" + ", ".join(sorted(TECHNIQUES)) + ")"
    assert listed in comments["enabled_techniques"]
    assert listed in comments["forbidden_techniques"]
    for _, param in criteria_params():
        words = comments[param.criteria]
        if param.kind == "choice":
            assert all(value in words for value, _ in param.choices), (param.criteria, words)
        else:
            assert f"{param.minimum:g} to {param.maximum:g}" in words, (param.criteria, words)


def test_under_gevent_the_socket_capacity_is_connections_not_threads():
    """gevent holds a connection per greenlet: reserved_threads counts against
    server.connections, and more reserved places than threads is fine."""
    settings = load_config(
        environ={
            "OPTIDECK_SERVER_WORKER_CLASS": "gevent",
            "OPTIDECK_SERVER_THREADS": "2",
            "OPTIDECK_SERVER_CONNECTIONS": "3000",
            "OPTIDECK_LIVE_RESERVED_THREADS": "8",
        }
    )
    from webapp.live.admission import Admission

    assert Admission(settings).limit == 3000 - 8
    with pytest.raises(ConfigError):
        load_config(environ={"OPTIDECK_SERVER_THREADS": "2", "OPTIDECK_LIVE_RESERVED_THREADS": "8"})
