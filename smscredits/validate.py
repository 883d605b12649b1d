"""Validation of the text a user types: names, zones, instants, message ids, notes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from smscredits.errors import BadInput

_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}\Z", re.ASCII)
_MSG_ID = re.compile(r"[\x21-\x7e]{1,128}\Z", re.ASCII)
_RELATIVE = re.compile(r"([0-9]{1,6})([smhdw])\Z", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_NOTE = 1000


def user_name(name: str) -> str:
    if not _NAME.match(name):
        why = "empty" if not name else "too long" if len(name) > 64 else "bad characters"
        raise BadInput(
            f"bad user name {name!r} ({why}): use 1-64 letters, digits and . _ @ -"
        )
    return name


def time_zone(name: str) -> str:
    from smscredits.schedule import zone

    try:
        zone(name)
    except ValueError:
        raise BadInput(
            f"unknown time zone {name!r}: use an IANA name like Europe/Budapest"
        ) from None
    return name


def is_message_id(value: str) -> bool:
    return _MSG_ID.match(value) is not None


def message_id(value: str) -> str:
    if not is_message_id(value):
        raise BadInput(f"bad message id {value!r}: 1-128 printable ASCII characters, no spaces")
    return value


def note(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_NOTE:
        raise BadInput(f"note too long ({len(value)} characters, at most {MAX_NOTE})")
    if value is not None and "\x00" in value:
        raise BadInput("bad note: it contains a NUL character")
    return value


def instant(value: str, *, now: datetime, what: str = "time") -> datetime:
    """``2026-11-25``, ``2026-11-25T10:00``, with ``Z`` or an offset (else UTC), or ``7d``/``12h``
    ago."""
    rel = _RELATIVE.match(value)
    try:
        if rel:
            return now - timedelta(**{_UNITS[rel.group(2)]: int(rel.group(1))})
        at = datetime.fromisoformat(value)
        if not 1970 <= at.year <= 9000:
            raise OverflowError
    except OverflowError:
        raise BadInput(f"bad {what} {value!r}: out of range (1970 to 9000)") from None
    except ValueError:
        raise BadInput(
            f"bad {what} {value!r}: use an ISO date or time (2026-11-25, 2026-11-25T10:00Z) "
            "or an age like 7d, 12h, 30m"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
