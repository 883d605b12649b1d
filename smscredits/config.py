"""Where settings come from: flag > environment > config file > default.

Kept free of SQLAlchemy so that ``--help`` and ``config show`` start fast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_plus

from smscredits.errors import BadInput

APP = "smscredits"
ENV_DB = "SMSCREDITS_DB"
# Settings the config file may hold, with their environment variable and meaning.
KEYS: dict[str, tuple[str, str]] = {
    "db": (ENV_DB, "database URL or SQLite file path"),
    "default_tz": ("SMSCREDITS_DEFAULT_TZ", "time zone of users created without --tz"),
    "actor": ("SMSCREDITS_ACTOR", "name recorded as the actor of changes"),
    "hold_ttl": ("SMSCREDITS_HOLD_TTL", "how long a hold waits for its report (90s, 30m, 48h)"),
    "hold_expiry": ("SMSCREDITS_HOLD_EXPIRY", "what expiry does to a hold: settle or void"),
    "void_settled": ("SMSCREDITS_VOID_SETTLED",
                     "what void does to a settled message: refund or refuse"),
    "serve.token": ("SMSCREDITS_SERVE_TOKEN", "bearer token of `serve`'s gateway role"),
    "serve.admin_token": ("SMSCREDITS_SERVE_ADMIN_TOKEN", "bearer token of `serve`'s admin role"),
}
# Settings whose value is a secret: shown masked.
SECRET_KEYS = frozenset(("serve.token", "serve.admin_token"))
DEFAULTS = {"default_tz": "UTC", "hold_ttl": "48h", "hold_expiry": "settle",
            "void_settled": "refund"}
# A delivery status mapped otherwise than by default: dlr.<kannel|jasmin|smpp>.<STATUS>,
# file only (``config set dlr.jasmin.EXPIRED settle``).
_DLR_KEY = re.compile(r"dlr\.(kannel|jasmin|smpp)\.([A-Za-z0-9_]{1,32})\Z")


def is_dlr_key(key: str) -> bool:
    return _DLR_KEY.match(key) is not None


def dlr_settings() -> dict[str, str]:
    """The delivery statuses the config file maps: ``{"dlr.jasmin.EXPIRED": "settle"}``."""
    return {k: v for k, v in read_file_settings().items() if is_dlr_key(k)}


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
    return {k: str(v) for k, v in data.items() if k in KEYS or is_dlr_key(k)}


def write_setting(key: str, value: str | None, path: Path | None = None) -> Path:
    """Set (or with None remove) one key in the config file, keeping the others."""
    if key not in KEYS and not is_dlr_key(key):
        raise BadInput(f"unknown setting {key!r}: expected one of {', '.join(KEYS)}, or "
                       "dlr.<kannel|jasmin|smpp>.<status>")
    if value is not None and not is_text(value):
        raise BadInput(f"bad value for {key}: not valid UTF-8 text")
    path = path or config_file()
    settings = read_file_settings(path)
    if value is None:
        settings.pop(key, None)
    else:
        settings[key] = value
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_whole(path, "".join(f"{_toml_key(k)} = {_toml_string(v)}\n"
                                   for k, v in settings.items()))
    except OSError as e:
        raise BadInput(f"cannot write config file {path}: {e.strerror or e}") from None
    return path


def _write_whole(path: Path, text: str) -> None:
    """Replace the file by ``text`` at once; on any failure the old file stays and no
    temporary file is left behind."""
    import tempfile

    # The file may hold a database password: owner-only (mkstemp makes it 0600).
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def is_text(value: str) -> bool:
    """Whether a string can be written as UTF-8 (bytes that were not UTF-8 arrive as lone
    surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _toml_key(key: str) -> str:
    # A dotted key is quoted: bare, TOML would read it as nested tables.
    return f'"{key}"' if "." in key else key


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
        if not is_text(os.environ[env_name]):
            raise BadInput(f"bad {env_name}: not valid UTF-8 text")
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


MASK = "***"
# Query options of a database URL that hold a secret or point to one: libpq's password,
# sslpassword, passfile and sslkey, and any other option named like a secret. Masking an
# option that was harmless costs a little information; showing a secret costs the secret.
_SECRET_OPTION = re.compile(r"pass|pwd|secret|token|key|cred|auth", re.I)
# The password of a URL's user info: greedy up to the last "@", since a password may hold
# "/", "?" or "@"; masking more is safe.
_USER_INFO = re.compile(r"(://[^:/@?]*:)(.*)@")
# A URL quoted in free text, and a libpq conninfo pair (password=xyz, sslkey='a b').
_URL_IN_TEXT = re.compile(r"[A-Za-z][\w+.-]*://\S+")
_CONNINFO_PAIR = re.compile(r"\b([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s'\"&]+)")


def mask_url(url: str) -> str:
    """The database setting as it may be shown: the user-info password and the value of every
    secret query option (``password=``, ``sslpassword=``, ``passfile=``, ``sslkey=``...)
    replaced by ***. Every output of a database URL goes through here (without importing
    SQLAlchemy)."""
    masked = _USER_INFO.sub(rf"\g<1>{MASK}@", url)
    head, sep, query = masked.partition("?")
    if not sep:
        return masked
    return head + sep + "&".join(_mask_option(pair) for pair in query.split("&"))


def _mask_option(pair: str) -> str:
    key, eq, value = pair.partition("=")
    secret = eq and value and _SECRET_OPTION.search(unquote_plus(key))
    return f"{key}={MASK}" if secret else pair


def mask_text(text: str, url: str = "") -> str:
    """Free text (a driver's error message) as it may be shown: every secret of the database
    URL ``url`` replaced by ***, wherever the driver quoted it, and so are URLs and conninfo
    pairs (``password=...``) of secret options in it."""
    for secret in sorted(url_secrets(url), key=len, reverse=True):
        # Where the secret is a whole word, not inside one: a short password would otherwise
        # turn every word holding its letters into ***.
        before = r"(?<![A-Za-z0-9])" if secret[0].isalnum() else ""
        after = r"(?![A-Za-z0-9])" if secret[-1].isalnum() else ""
        text = re.sub(before + re.escape(secret) + after, MASK, text)
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group()), text)
    return _CONNINFO_PAIR.sub(
        lambda m: f"{m.group(1)}={MASK}" if _SECRET_OPTION.search(m.group(1)) else m.group(),
        text)


def url_secrets(url: str) -> set[str]:
    """The secrets in a database URL, as written and percent-decoded."""
    found = []
    user_info = _USER_INFO.search(url)
    if user_info:
        found.append(user_info.group(2))
    _, sep, query = _USER_INFO.sub("://@", url).partition("?")
    for pair in query.split("&") if sep else ():
        key, eq, value = pair.partition("=")
        if eq and _SECRET_OPTION.search(unquote_plus(key)):
            found.append(value)
    return {form for value in found for form in (value, unquote_plus(value), unquote(value))
            if form}
