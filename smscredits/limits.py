"""Daily, weekly and monthly spending limits: the one definition of a window.

A window is a local calendar unit of the user's zone (a day, an ISO week, a calendar month),
named by a key (``keys_at``). An account keeps, for each window, the key of the window it
last spent in and what it spent there (``day_key``/``day_spent``... on the power row), so a
check never sums the history:

- a counter whose key is not the current window's reads as 0 spent (``spent_in``);
- a charge adds its cost to each current window, a rolled-over window starting at the cost
  (``charged``), and is refused when a counter would pass its limit (``passed``);
- a refund gives the cost back only to the windows still current, those the charge was
  counted in (``moved``); a window that has ended keeps what was spent in it.

Charging, refunds, the read side, ``user set-tz``'s recount and ``verify`` all apply these
rules; this module is pure (no SQL, no I/O), so each rule is written once.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from smscredits import clock
from smscredits.amounts import MAX_MILLIS

if TYPE_CHECKING:
    from smscredits.reads import Limits

WINDOWS = ("day", "week", "month")
Keys = tuple[int, int, int]  # the (day, week, month) keys of an instant
Spent = tuple[int, int, int]  # millis spent in each of those windows

LIMIT_COLUMN = {"day": "daily_limit", "week": "weekly_limit", "month": "monthly_limit"}
REASON = {"day": "daily_limit", "week": "weekly_limit", "month": "monthly_limit"}
_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}


@lru_cache(maxsize=4096)
def _keys_at_minute(tz: str, minute: int) -> Keys:
    # Every zone's offset is a whole number of minutes, so keys are constant within a minute.
    from smscredits import schedule  # calendars and zones: not needed by the journal reads

    return schedule.window_keys(clock.from_us(minute * 60_000_000), tz)


def keys_at(at_us: int, tz: str) -> Keys:
    """The (day, week, month) window keys of an instant in a zone."""
    return _keys_at_minute(tz, at_us // 60_000_000)


def ends_at(window: str, key: int, tz: str) -> int:
    """The instant (µs) at which a window ends: the next unit's local midnight."""
    from smscredits import schedule

    return clock.to_us(schedule.window_reset(window, key, tz))


def starts_at(window: str, key: int, tz: str) -> int:
    """The instant (µs) at which a window starts: where the one before it ends."""
    return ends_at(window, key - (7 if window == "week" else 1), tz)


def spent_in(held: Keys, spent: Spent, keys: Keys) -> Spent:
    """What the counters held for windows ``held`` say of the windows ``keys``: a window that
    is not the held one has nothing spent in it yet."""
    return (spent[0] if held[0] == keys[0] else 0, spent[1] if held[1] == keys[1] else 0,
            spent[2] if held[2] == keys[2] else 0)


def charged(held: Keys, spent: Spent, keys: Keys, cost: int) -> Spent:
    """The counters after charging ``cost`` in the windows ``keys``: added to each held
    window, and the start of each window that rolled over."""
    return (spent[0] + cost if held[0] == keys[0] else cost,
            spent[1] + cost if held[1] == keys[1] else cost,
            spent[2] + cost if held[2] == keys[2] else cost)


def moved(held: Keys, spent: Spent, keys: Keys, delta: int) -> Spent:
    """The counters after ``delta`` is counted in the windows ``keys`` (a refund gives back
    with a negative one): only a window still held moves; one that has ended is history."""
    return (spent[0] + delta if held[0] == keys[0] else spent[0],
            spent[1] + delta if held[1] == keys[1] else spent[1],
            spent[2] + delta if held[2] == keys[2] else spent[2])


def within(limits: tuple[int | None, int | None, int | None], spent: Spent) -> bool:
    """Whether every counter is within its window's limit, and within the documented range
    (a window without a limit ends at MAX_MILLIS): one comparison each, called per charge."""
    day, week, month = limits
    return (spent[0] <= (day if day is not None else MAX_MILLIS)
            and spent[1] <= (week if week is not None else MAX_MILLIS)
            and spent[2] <= (month if month is not None else MAX_MILLIS))


def room_for(limits: tuple[int | None, int | None, int | None], spent: Spent, now: Keys,
             keys: Keys, extra: int) -> bool:
    """Whether ``extra``, counted in the windows ``keys`` that are still current at ``now``
    (``spent``: the counters of the windows ``now``), keeps each of those within its limit.
    A window it is not counted in (ended, or another) is none of its concern."""
    after = moved(now, spent, keys, extra)
    return all(after[i] <= (limit if limit is not None else MAX_MILLIS)
               for i, limit in enumerate(limits) if now[i] == keys[i])


def passed(limits: tuple[int | None, int | None, int | None], spent: Spent) -> str | None:
    """The first window (day, week, month) whose limit these counters pass; None if none
    does. A window without a limit is never passed."""
    for window, limit, total in zip(WINDOWS, limits, spent, strict=True):
        if limit is not None and total > limit:
            return window
    return None


def unreachable(lim: Limits) -> list[dict[str, object]]:
    """Warnings for a limit above the limit of a larger window (daily 50, weekly 30): it is
    accepted, since either may change next, but the larger window's limit binds first."""
    found: list[dict[str, object]] = []
    windows = [w for w in lim.windows if w.limit is not None]
    for i, small in enumerate(windows):
        large = next((w for w in windows[i + 1:] if w.limit is not None), None)
        if large is not None and small.limit is not None and large.limit is not None \
                and small.limit > large.limit:
            found.append({
                "code": "unreachable_limit",
                "message": f"{lim.user}: {_ADJECTIVE[small.window]} limit {small.limit} is "
                           f"above the {_ADJECTIVE[large.window]} limit {large.limit}; the "
                           f"{_ADJECTIVE[large.window]} limit is reached first",
                "window": small.window, "limit": small.limit,
                "reached_first": large.window, "reached_first_limit": large.limit,
            })
    return found
