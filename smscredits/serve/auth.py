"""Who may call ``serve``: bearer tokens with one of two roles.

``gateway`` may charge, hold, settle, void, quote, read a balance and report deliveries;
``admin`` may do all that and refund and read a user's events. Tokens come from the config
(``serve.token`` is a gateway's, ``serve.admin_token`` an admin's; each also from its
environment variable) and from a tokens file (``--tokens FILE``: one ``ROLE TOKEN`` per line,
``#`` comments), which must not be readable by others. A token is compared with every known
token in constant time. With no token at all, every caller is an admin: allowed on a
loopback address only.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from smscredits.errors import BadInput

GATEWAY, ADMIN = "gateway", "admin"
ROLES = (GATEWAY, ADMIN)
# Long enough not to be guessed online; printable ASCII without spaces, as a header carries it.
_TOKEN = re.compile(r"[\x21-\x7e]{16,256}\Z")


def check_token(token: str, where: str) -> str:
    if not _TOKEN.match(token):
        raise BadInput(f"bad token in {where}: 16-256 printable ASCII characters, no spaces")
    return token


@dataclass(frozen=True)
class Tokens:
    """The known tokens, each with its role."""

    pairs: tuple[tuple[bytes, str], ...] = ()

    @property
    def open(self) -> bool:
        """No token is configured: every caller is an admin."""
        return not self.pairs

    def role_of(self, given: str | None) -> str | None:
        """The role of ``given``, or None. Every token is compared, in constant time."""
        if self.open:
            return ADMIN
        if given is None:
            return None
        presented = given.encode("utf-8", "surrogateescape")
        found = None
        for token, role in self.pairs:
            if hmac.compare_digest(token, presented):
                found = role
        return found


def load_tokens(file: Path | None) -> Tokens:
    """The tokens of the config (and environment) and of ``file``."""
    from smscredits.config import resolve

    pairs: list[tuple[bytes, str]] = []
    for key, role in (("serve.token", GATEWAY), ("serve.admin_token", ADMIN)):
        setting = resolve(key)
        if setting.value:
            pairs.append((check_token(setting.value, key).encode(), role))
    if file is not None:
        pairs += _read_file(file)
    return Tokens(tuple(pairs))


def _read_file(path: Path) -> list[tuple[bytes, str]]:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise BadInput(f"cannot read tokens file {path}: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInput(f"tokens file {path} is open to others: chmod 600 {path}")
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or words[0] not in ROLES:
            raise BadInput(f"tokens file {path}, line {number}: expected ROLE TOKEN, "
                           f"ROLE one of {', '.join(ROLES)}")
        pairs.append((check_token(words[1], f"{path}, line {number}").encode(), words[0]))
    return pairs


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
