"""Calendar arithmetic for spending-limit windows and periodic refill plans.

Pure functions over timezone-aware UTC instants and IANA zone names; nothing here reads the
clock, so callers pass ``now`` in (freezegun-friendly). Local calendar units (day, ISO week,
month) are identified by integer keys so they can be stored and compared cheaply:

* day   -> the local date's proleptic ordinal (``date.toordinal()``)
* week  -> the ordinal of the Monday of the local ISO week
* month -> ``year * 12 + (month - 1)``

A refill plan's period number is the key of the calendar unit it is due in. The one exception
is a due time inside a DST gap that crosses local midnight (or a skipped day, as in Pacific/Apia
on 2011-12-30): it moves to the first instant after the gap, which is in the following unit.
"""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "KINDS",
    "Rule",
    "describe",
    "due_periods",
    "next_due",
    "occurrence",
    "parse_at",
    "parse_on",
    "period_of",
    "window_keys",
    "window_reset",
    "zone",
]

KINDS = ("day", "week", "month")
LAST_DAY = -1
MINUTES_PER_DAY = 24 * 60

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WEEKDAY_NAMES = {
    **{name.lower(): i for i, name in enumerate(_WEEKDAYS)},
    **{name[:3].lower(): i for i, name in enumerate(_WEEKDAYS)},
}
# [0-9] rather than \d: \d would also accept non-ASCII digits such as "٣".
_HH_MM = re.compile(r"([0-9]{1,2}):([0-9]{2})")


# --- zones -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name; ValueError for anything that is not a known zone."""
    # ZoneInfo guards against path tricks itself, but an explicit check keeps the error uniform
    # and never lets a user-supplied name touch the file system outside TZPATH.
    if not isinstance(name, str) or not _plausible_zone_name(name):
        raise ValueError(f"unknown time zone: {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone: {name!r}") from None


def _plausible_zone_name(name: str) -> bool:
    parts = name.split("/")
    return (
        bool(name)
        and "\\" not in name
        and "\0" not in name
        and all(part not in ("", ".", "..") for part in parts)
    )


def _require_aware(at: datetime) -> None:
    # A naive datetime would silently be read in the host's zone by astimezone().
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {at!r}")


def _local(at: datetime, tz: str) -> datetime:
    _require_aware(at)
    return at.astimezone(zone(tz))


def _local_to_utc(day: date, minute: int, tz: str) -> datetime:
    """UTC instant of a local wall time: first occurrence in a fold, gap end in a gap."""
    z = zone(tz)
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    # fold=0 picks the earlier of two ambiguous instants (PEP 495).
    utc = wall.replace(tzinfo=z, fold=0).astimezone(UTC)
    if utc.astimezone(z).replace(tzinfo=None) == wall:
        return utc
    return _gap_end(wall, z)


def _gap_end(wall: datetime, z: ZoneInfo) -> datetime:
    """The transition instant that skips over the non-existent local time ``wall``."""
    # In a gap, fold=1 applies the offset after the transition and fold=0 the one before, so
    # the transition lies in (early, late]; the local clock jumps past ``wall`` exactly there.
    # tzdata transitions are whole seconds, so bisect over seconds.
    early = wall.replace(tzinfo=z, fold=1).astimezone(UTC)
    late = wall.replace(tzinfo=z, fold=0).astimezone(UTC)
    lo, hi = 0, int((late - early).total_seconds())
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if (early + timedelta(seconds=mid)).astimezone(z).replace(tzinfo=None) > wall:
            hi = mid
        else:
            lo = mid
    return early + timedelta(seconds=hi)


# --- calendar unit keys ----------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown period kind: {kind!r} (expected day, week or month)")


def _key_of(kind: str, day: date) -> int:
    if kind == "month":
        return day.year * 12 + day.month - 1
    ordinal = day.toordinal()
    return ordinal - day.weekday() if kind == "week" else ordinal


def _unit_start(kind: str, key: int) -> date:
    """First local date of the calendar unit with that key."""
    if kind == "month":
        year, month0 = divmod(key, 12)
        return date(year, month0 + 1, 1)
    start = date.fromordinal(key)
    if kind == "week" and start.weekday() != 0:
        raise ValueError(f"week key {key} is not the ordinal of a Monday ({start.isoformat()})")
    return start


def _step(kind: str, key: int, n: int = 1) -> int:
    return key + 7 * n if kind == "week" else key + n


def window_keys(at: datetime, tz: str) -> tuple[int, int, int]:
    """The (day, week, month) keys of the local calendar units containing ``at`` in ``tz``."""
    local = _local(at, tz).date()
    return _key_of("day", local), _key_of("week", local), _key_of("month", local)


def period_label(kind: str, key: int) -> str:
    """A day, week or month key as people write it: ``2026-11-25``, ``2026-W48``, ``2026-11``."""
    if kind == "month":
        year, month = divmod(key, 12)
        return f"{year}-{month + 1:02d}"
    day = date.fromordinal(key)
    if kind == "week":
        iso = day.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    return day.isoformat()


def window_reset(kind: str, key: int, tz: str) -> datetime:
    """UTC instant at which the window ``key`` of ``kind`` ends: the next unit's local midnight."""
    _check_kind(kind)
    _unit_start(kind, key)  # validates week keys
    return _local_to_utc(_unit_start(kind, _step(kind, key)), 0, tz)


# --- refill rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """A periodic refill plan: every day/week/month, on a weekday or day of month, at a time."""

    every: str  # "day" | "week" | "month"
    on: int | None  # week: 0=Monday..6=Sunday; month: 1..31 or -1 (last day); day: None
    at_minute: int  # minutes after local midnight, 0..1439
    tz: str

    def __post_init__(self) -> None:
        _check_kind(self.every)
        _check_on(self.every, self.on)
        if not _is_int(self.at_minute) or not 0 <= self.at_minute < MINUTES_PER_DAY:
            raise ValueError(f"at_minute must be 0..1439, got {self.at_minute!r}")
        zone(self.tz)


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; True as a weekday would be a silent bug.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_on(every: str, on: int | None) -> None:
    if every == "day":
        ok = on is None
    elif every == "week":
        ok = _is_int(on) and 0 <= on <= 6
    else:
        ok = _is_int(on) and (on == LAST_DAY or 1 <= on <= 31)
    if not ok:
        raise ValueError(f"invalid 'on' for a {every} plan: {on!r}")


def parse_on(every: str, text: str | None) -> int | None:
    """Parse the user's --on value for a plan of kind ``every``; None gives the default."""
    _check_kind(every)
    if text is None:
        return {"day": None, "week": 0, "month": 1}[every]
    cleaned = text.strip().lower()
    if every == "week":
        if cleaned in _WEEKDAY_NAMES:
            return _WEEKDAY_NAMES[cleaned]
        if cleaned.isascii() and cleaned.isdigit() and 1 <= int(cleaned) <= 7:
            return int(cleaned) - 1
        raise ValueError(f"invalid --on for a weekly plan: {text!r} (use mon..sun or 1..7)")
    if every == "month":
        if cleaned == "last":
            return LAST_DAY
        if cleaned.isascii() and cleaned.isdigit() and 1 <= int(cleaned) <= 31:
            return int(cleaned)
        raise ValueError(f"invalid --on for a monthly plan: {text!r} (use 1..31 or last)")
    raise ValueError(f"--on is not used by daily plans, got {text!r}")


def parse_at(text: str | None) -> int:
    """Parse a 24-hour "HH:MM" into minutes after midnight; None means midnight."""
    if text is None:
        return 0
    match = _HH_MM.fullmatch(text.strip())
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"invalid time of day: {text!r} (use HH:MM, 00:00..23:59)")
    return int(match[1]) * 60 + int(match[2])


def _due_date(rule: Rule, period: int) -> date:
    start = _unit_start(rule.every, period)
    if rule.every == "day":
        return start
    assert rule.on is not None  # Rule.__post_init__: a week or month rule has an int
    if rule.every == "week":
        return start + timedelta(days=rule.on)
    last = calendar.monthrange(start.year, start.month)[1]
    return start.replace(day=last if rule.on == LAST_DAY else min(rule.on, last))


def occurrence(rule: Rule, period: int) -> datetime:
    """UTC instant at which ``period`` of ``rule`` is due."""
    return _local_to_utc(_due_date(rule, period), rule.at_minute, rule.tz)


def period_of(rule: Rule, at: datetime) -> int:
    """The period whose local calendar unit contains ``at``."""
    return _key_of(rule.every, _local(at, rule.tz).date())


def due_periods(rule: Rule, after: datetime, now: datetime) -> list[int]:
    """Periods whose occurrence t satisfies after < t <= now, ascending."""
    _require_aware(after)
    _require_aware(now)
    if now <= after:
        return []
    # Start one unit early: a due time inside a gap that crosses local midnight (America/Nuuk
    # skips Saturday 23:00-24:00 every spring) is pushed into the next unit.
    period = _step(rule.every, period_of(rule, after), -1)
    due: list[int] = []
    while (t := occurrence(rule, period)) <= now:
        if t > after:
            due.append(period)
        period = _step(rule.every, period)
    return due


def next_due(rule: Rule, now: datetime) -> datetime:
    """The first occurrence instant strictly after ``now``."""
    period = _step(rule.every, period_of(rule, now), -1)
    while (t := occurrence(rule, period)) <= now:
        period = _step(rule.every, period)
    return t


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def describe(rule: Rule) -> str:
    """The rule in words, e.g. "every week on Monday at 06:30 (UTC)"."""
    when = f"at {_clock(rule.at_minute)} ({rule.tz})"
    if rule.every == "day":
        return f"every day {when}"
    assert rule.on is not None  # Rule.__post_init__: a week or month rule has an int
    if rule.every == "week":
        return f"every week on {_WEEKDAYS[rule.on]} {when}"
    if rule.on == LAST_DAY:
        return f"every month on the last day {when}"
    # Day 29+ is missing from some months; say so rather than surprise the user in February.
    fallback = " (or the last day)" if rule.on > 28 else ""
    return f"every month on day {rule.on}{fallback} {when}"
