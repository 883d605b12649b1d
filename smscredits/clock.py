"""The one clock every business timestamp comes from.

Timestamps are stored as integer microseconds since the Unix epoch (UTC): exact, portable
between SQLite and Postgres, and unaffected by database clocks that freezegun cannot move.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current instant, timezone-aware UTC (freezegun moves it in tests)."""
    return datetime.now(UTC)


def to_us(at: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch, exactly (no float)."""
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    seconds, micro = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)


def now_us() -> int:
    return to_us(now())


def iso(us: int | None) -> str | None:
    """ISO 8601 text in UTC to the second, with a Z, as shown in tables and JSON."""
    if us is None:
        return None
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_text(iso_utc: str, tz: str) -> str:
    """An ISO UTC instant (``2026-11-25T23:00:00Z``) as local time in a zone, with the zone's
    abbreviation: ``2026-11-26 00:00 CET``."""
    from zoneinfo import ZoneInfo

    at = datetime.fromisoformat(iso_utc.replace("Z", "+00:00"))
    return at.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")
