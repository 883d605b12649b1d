"""Where settings come from: flag > environment > config file > default.

Kept free of SQLAlchemy so that ``--help`` and ``config show`` start fast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from smscredits.errors import BadInput

APP = "smscredits"
ENV_DB = "SMSCREDITS_DB"
# Settings the config file may hold, with their environment variable and meaning.
KEYS: dict[str, tuple[str, str]] = {
    "db": (ENV_DB, "database URL or SQLite file path"),
    "default_tz": ("SMSCREDITS_DEFAULT_TZ", "time zone of users created without --tz"),
    "actor": ("SMSCREDITS_ACTOR", "name recorded as the actor of changes"),
}
DEFAULTS = {"default_tz": "UTC"}


def config_dir() -> Path:
    from platformdirs import user_config_dir

    return Path(os.environ.get("SMSCREDITS_CONFIG_DIR") or user_config_dir(APP))


def config_file() -> Path:
    return config_dir() / "config.toml"


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP))


def default_db_path() -> Path:
    return data_dir() / "smscredits.db"


def read_file_settings(path: Path | None = None) -> dict[str, str]:
    path = path or config_file()
    if not path.exists():  # the common case: no TOML parser to import
        return {}
    import tomllib

    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BadInput(f"cannot read config file {path}: {e}") from None
    return {k: str(v) for k, v in data.items() if k in KEYS}


def write_setting(key: str, value: str | None, path: Path | None = None) -> Path:
    """Set (or with None remove) one key in the config file, keeping the others."""
    if key not in KEYS:
        raise BadInput(f"unknown setting {key!r}: expected one of {', '.join(KEYS)}")
    path = path or config_file()
    settings = read_file_settings(path)
    if value is None:
        settings.pop(key, None)
    else:
        settings[key] = value
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The file may hold a database password: owner-only, written whole.
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for k, v in settings.items():
            f.write(f"{k} = {_toml_string(v)}\n")
    tmp.replace(path)
    return path


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'


@dataclass(frozen=True)
class Setting:
    key: str
    value: str | None
    source: str  # "flag", "env", "file", "default"


def resolve(key: str, flag: str | None = None) -> Setting:
    env_name = KEYS[key][0]
    if flag is not None:
        return Setting(key, flag, "flag")
    if os.environ.get(env_name):
        return Setting(key, os.environ[env_name], "env")
    file_value = read_file_settings().get(key)
    if file_value is not None:
        return Setting(key, file_value, "file")
    if key == "db":
        return Setting(key, str(default_db_path()), "default")
    if key == "actor":
        return Setting(key, _login_name(), "default")
    return Setting(key, DEFAULTS.get(key), "default")


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, without importing SQLAlchemy."""
    # Greedy up to the last "@": a password may hold "/" or "@"; masking more is safe.
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)
