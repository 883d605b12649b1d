"""Validation of the text a user types: names, zones, instants, message ids, notes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import cache

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
    """A canonical IANA zone name. ``localtime``, ``posixrules``, ``right/...`` and
    ``posix/...`` load as zones too, but mean different things on different hosts (what the
    host's clock is set to, leap seconds counted or not), so a stored user would get other
    windows on another host: refused."""
    from smscredits.schedule import zone

    try:
        zone(name)
    except ValueError:
        why = "unknown time zone"
    else:
        if name == "UTC" or name in iana_zones():
            return name
        why = "host-dependent time zone"
    close = _close_zones(name)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise BadInput(f"{why} {name!r}: use a canonical IANA name like Europe/Budapest{hint}")


@cache
def iana_zones() -> frozenset[str]:
    """The IANA zone names: the system's zones (and the tzdata package's) without the host's
    own entries (``zoneinfo.available_timezones`` leaves out ``posixrules``, ``right/`` and
    ``posix/``, not ``localtime``)."""
    from zoneinfo import available_timezones

    return frozenset(available_timezones() - {"localtime", "posixrules"})


def _close_zones(name: str) -> list[str]:
    """Up to three canonical names close to ``name`` (the same name in other case first)."""
    import difflib

    if not isinstance(name, str) or len(name) > 64:
        return []
    by_lower = {z.lower(): z for z in iana_zones()}
    key = name.lower().removeprefix("posix/").removeprefix("right/")
    if key in by_lower:
        return [by_lower[key]]
    return [by_lower[z] for z in difflib.get_close_matches(key, by_lower, n=3, cutoff=0.75)]


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


def time_range(since: str | None, until: str | None, *, now: datetime
               ) -> tuple[datetime | None, datetime | None]:
    """``--since``/``--until`` as every command reads them: instants (see ``instant``), the
    first before the second; None where not given."""
    lo = instant(since, now=now, what="--since") if since is not None else None
    hi = instant(until, now=now, what="--until") if until is not None else None
    if lo is not None and hi is not None and lo >= hi:
        raise BadInput(f"--since {since!r} is not before --until {until!r}")
    return lo, hi
