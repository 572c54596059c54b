"""Settings: the shipped config.toml, then OPTIDECK_CONFIG, then OPTIDECK_* variables.

The shipped config.toml is both the documentation and the schema: every key it
holds is a setting, and the type of its default is the type a setting must have.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import limits

PACKAGE_DIR = Path(__file__).resolve().parent
# templates/, static/, migrations/ and config.toml sit at the top of a checkout (see
# docs/architecture.md); a built wheel carries them inside the package (setup.py puts them there).
PACKAGED = (PACKAGE_DIR / "config.toml").is_file()
RESOURCES_DIR = PACKAGE_DIR if PACKAGED else PACKAGE_DIR.parent
DEFAULTS_FILE = RESOURCES_DIR / "config.toml"
ENV_PREFIX = "OPTIDECK_"

# Short names that deployment scripts already use (the README's "Configuration").
ENV_ALIASES = {
    "SECRET_KEY": ("app", "secret_key"),
    "DATABASE_URL": ("database", "url"),
    "STORAGE_DIR": ("storage", "dir"),
    "REDIS_URL": ("redis", "url"),
}
# OPTIDECK_* variables that are not settings: the config file's path, the CLI's
# password input, and the test suite's own switches.
ENV_NOT_SETTINGS = {"CONFIG", "PASSWORD"}
ENV_NOT_SETTINGS_PREFIXES = ("TEST_",)

SECRET_KEYS = {"secret_key", "password"}
ISOLATION_CHOICES = ("auto", "bubblewrap", "user", "none")
WORKER_CLASSES = ("gthread", "gevent")
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}


class ConfigError(SystemExit):
    """A setting is missing its mark.

    A SystemExit, so that `flask`, gunicorn and wsgi.py stop with this message
    alone instead of a traceback: the message names the key to fix.
    """

    def __init__(self, message: str):
        super().__init__(f"Optideck configuration error: {message}")
        self.message = message


def load_config(
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Return the effective settings as {section: {key: value}}, validated."""
    environ = os.environ if environ is None else environ
    defaults = _read_toml(DEFAULTS_FILE)
    settings = copy.deepcopy(defaults)
    # The defaults' relative paths: from the checkout, or, installed from a wheel, from the
    # current folder: site-packages is no place for a database (and often read-only).
    source_dir = Path.cwd() if PACKAGED else RESOURCES_DIR

    user_file = environ.get(ENV_PREFIX + "CONFIG")
    if user_file:
        path = Path(user_file).expanduser().resolve()
        _merge(settings, defaults, _read_toml(path), origin=str(path))
        source_dir = path.parent

    _merge(settings, defaults, _from_environ(environ, defaults), origin="environment")
    if overrides:
        _merge(settings, defaults, overrides, origin="overrides")

    _check_values(settings)
    _resolve_paths(settings, source_dir)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _merge(settings, defaults, given: dict[str, Any], origin: str) -> None:
    for section, values in given.items():
        if section not in defaults:
            raise ConfigError(f"unknown section [{section}] in {origin}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] in {origin} must be a table of settings")
        for key, value in values.items():
            if key not in defaults[section]:
                raise ConfigError(f"unknown setting {section}.{key} in {origin}")
            settings[section][key] = _typed(section, key, value, defaults[section][key], origin)


def _typed(section: str, key: str, value: Any, default: Any, origin: str) -> Any:
    name = f"{section}.{key}"
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int to Python; a port of `true` is still a mistake.
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ConfigError(f"{name} in {origin} must be {_type_word(expected)}, got {value!r}")
    if expected is list and not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{name} in {origin} must be a list of strings, got {value!r}")
    return value


def _type_word(kind: type) -> str:
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list of strings",
    }[kind]


def _from_environ(environ, defaults) -> dict[str, dict[str, Any]]:
    """Parse OPTIDECK_* variables into typed values, by the default's type."""
    found: dict[str, dict[str, Any]] = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        name = var[len(ENV_PREFIX) :]
        if name in ENV_NOT_SETTINGS or name.startswith(ENV_NOT_SETTINGS_PREFIXES):
            continue
        if name in ENV_ALIASES:
            section, key = ENV_ALIASES[name]
        else:
            section, _, key = name.lower().partition("_")
            if section not in defaults or key not in defaults[section]:
                raise ConfigError(f"{var} does not name a setting")
        found.setdefault(section, {})[key] = _parse_env(var, raw, defaults[section][key])
    return found


def _parse_env(var: str, raw: str, default: Any) -> Any:
    kind = type(default)
    text = raw.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is list:
            return [item.strip() for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise ConfigError(f"{var} must be {_type_word(kind)}, got {raw!r}") from exc
    return raw


def _check_values(settings) -> None:
    """Rules a type alone cannot say."""
    server = settings["server"]
    if not 1 <= server["port"] <= 65535:
        raise ConfigError(f"server.port must be between 1 and 65535, got {server['port']}")
    for key in ("workers", "threads", "connections", "timeout"):
        if server[key] < 1:
            raise ConfigError(f"server.{key} must be at least 1, got {server[key]}")
    if server["keepalive"] < 0:
        raise ConfigError(f"server.keepalive must be 0 or more, got {server['keepalive']}")
    if server["worker_class"] not in WORKER_CLASSES:
        raise ConfigError(
            f"server.worker_class must be one of {', '.join(WORKER_CLASSES)}, got {server['worker_class']!r}"
        )
    security = settings["security"]
    for key in ("access_token_minutes", "refresh_token_days", "personal_token_max_days"):
        if security[key] < 1:
            raise ConfigError(f"security.{key} must be at least 1, got {security[key]}")
    try:
        limits.parse(security["login_rate_limit"])
    except ValueError as exc:
        raise ConfigError(
            f"security.login_rate_limit must read like '10 per minute', got {security['login_rate_limit']!r}"
        ) from exc
    if not _hash_method_ok(security["password_hash_method"]):
        raise ConfigError(
            "security.password_hash_method must read like 'scrypt', 'scrypt:32768:8:1' or "
            f"'pbkdf2:sha256:600000', got {security['password_hash_method']!r}"
        )
    _check_ranges(settings)
    if settings["live"]["reserved_threads"] >= connection_capacity(server):
        capacity = "server.connections" if server["worker_class"] == "gevent" else "server.threads"
        raise ConfigError(
            f"live.reserved_threads must be less than {capacity} ({connection_capacity(server)}), "
            f"or no WebSocket could ever open; got {settings['live']['reserved_threads']}"
        )
    if settings["sandbox"]["isolation"] not in ISOLATION_CHOICES:
        raise ConfigError(
            f"sandbox.isolation must be one of {', '.join(ISOLATION_CHOICES)}, "
            f"got {settings['sandbox']['isolation']!r}"
        )
    level = settings["logging"]["level"].upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"logging.level must be one of {sorted(LOG_LEVELS)}, got {level!r}")
    settings["logging"]["level"] = level
    for origin in settings["cors"]["origins"]:
        parts = urlsplit(origin)
        if origin == "*" or parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(f"cors.origins must list origins like 'https://host:port', got {origin!r}")


def connection_capacity(server: dict) -> int:
    """How many connections one worker serves at once: a thread each under gthread, a
    greenlet each (up to server.connections) under gevent."""
    return server["connections"] if server["worker_class"] == "gevent" else server["threads"]


_WHOLE_NUMBER = re.compile(r"[1-9][0-9]*")


def _hash_method_ok(method: str) -> bool:
    """Whether werkzeug can hash with `method`, judged without hashing (scrypt costs a
    tenth of a second, and settings are loaded often): scrypt[:N:R:P] or
    pbkdf2[:DIGEST[:ITERATIONS]]."""
    name, *args = method.split(":")
    if name == "scrypt":
        if not args:
            return True
        if len(args) != 3 or not all(_WHOLE_NUMBER.fullmatch(a) for a in args):
            return False
        n = int(args[0])
        return n > 1 and n & (n - 1) == 0  # hashlib's scrypt takes powers of two only
    if name != "pbkdf2" or len(args) > 2:
        return False
    if len(args) == 2 and not _WHOLE_NUMBER.fullmatch(args[1]):
        return False
    if args:
        try:
            hashlib.pbkdf2_hmac(args[0], b"", b"", 1)  # one round: is the digest known?
        except ValueError:
            return False
    return True


# (section, key, lowest, highest): inclusive bounds of numeric settings.
# [criteria] is checked by the criteria's own schema (services/criteria.py).
RANGES = (
    ("database", "pool_size", 1, 1000),
    ("database", "max_overflow", 0, 1000),
    ("uploads", "max_bytes", 1, None),
    ("uploads", "analysis_timeout_seconds", 1, None),
    ("uploads", "max_unpacked_bytes", 1, None),
    ("uploads", "max_concurrent_analyses", 1, 64),
    ("executor", "max_workers", 1, 64),
    ("executor", "latency_seconds", 0.05, 60),
    ("executor", "poll_seconds", 0.05, 60),
    ("executor", "cancel_grace_seconds", 0.1, 600),
    ("executor", "heartbeat_timeout_seconds", 5, None),
    ("executor", "max_running_per_user", 1, 64),
    ("executor", "inference_timeout_seconds", 1, None),
    ("executor", "step_timeout_seconds", 1, None),
    ("sandbox", "memory_mb", 256, None),
    ("sandbox", "cpu_seconds", 10, None),
    ("sandbox", "output_mb", 1, None),
    ("sandbox", "open_files", 64, None),
    ("sandbox", "processes", 16, None),
    ("sandbox", "nice", 0, 19),
    ("dashboard", "stats_cache_seconds", 0, 3600),
    ("live", "auth_timeout_seconds", 0.5, 60),
    ("live", "reserved_threads", 1, None),
    ("live", "max_per_user", 0, None),
    ("live", "max_per_address", 0, None),
    ("live", "recheck_seconds", 0.1, 60),
)


def _check_ranges(settings) -> None:
    for section, key, low, high in RANGES:
        value = settings[section][key]
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"{section}.{key} must be {bounds}, got {value}")


def _resolve_paths(settings, source_dir: Path) -> None:
    instance = Path(settings["app"]["instance_dir"]).expanduser()
    if not instance.is_absolute():
        instance = (source_dir / instance).resolve()
    settings["app"]["instance_dir"] = str(instance)
    if not settings["database"]["url"]:
        settings["database"]["url"] = f"sqlite:///{instance / 'optideck.db'}"
    storage = settings["storage"]["dir"] or str(instance / "storage")
    settings["storage"]["dir"] = str(Path(storage).expanduser().resolve())
    sandbox = settings["sandbox"]["work_dir"] or str(instance / "sandbox")
    settings["sandbox"]["work_dir"] = str(Path(sandbox).expanduser().resolve())


def ensure_secret_key(settings) -> str:
    """The configured key, else the one kept in the instance folder (made once)."""
    if settings["app"]["secret_key"]:
        return settings["app"]["secret_key"]
    instance = Path(settings["app"]["instance_dir"])
    instance.mkdir(parents=True, exist_ok=True)
    path = instance / "secret_key"
    try:
        # O_EXCL: when several processes start at once, one writes and the others read.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
    else:
        key = secrets.token_hex(32)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
    if len(key) < 32:
        raise ConfigError(f"{path} holds no usable secret key; delete it to make a new one")
    return key


def masked(settings) -> dict[str, dict[str, Any]]:
    """A copy fit for logs and the configuration page: no secret survives it."""
    shown = copy.deepcopy(settings)
    for values in shown.values():
        for key, value in values.items():
            if key in SECRET_KEYS and value:
                values[key] = "********"
            elif isinstance(value, str) and "://" in value:
                values[key] = _mask_url(value)
    return shown


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:********@{host}"))
