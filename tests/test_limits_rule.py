"""The window rules of ``limits``, against a model written from the README's words: a
counter of another window reads as 0, a charge adds to the current window and starts a new
one, a refund gives back only to a window still current, a limit is passed when a counter is
above it."""

from __future__ import annotations

from datetime import UTC, datetime

from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from smscredits import clock, limits
from smscredits.amounts import MAX_MILLIS

keys = st.tuples(*[st.integers(0, 3)] * 3)
spent = st.tuples(*[st.integers(0, MAX_MILLIS)] * 3)
limit = st.none() | st.integers(0, MAX_MILLIS)
bounds = st.tuples(limit, limit, limit)
cost = st.integers(0, 10**9)


@given(held=keys, counters=spent, now=keys, c=cost)
def test_a_charge_adds_to_the_current_window_and_starts_a_new_one(held, counters, now, c):
    after = limits.charged(held, counters, now, c)
    for i in range(3):
        assert after[i] == (counters[i] if held[i] == now[i] else 0) + c
    # What a reader sees of the windows now, before the charge, plus the cost.
    before = limits.spent_in(held, counters, now)
    assert after == tuple(b + c for b in before)


@given(held=keys, counters=spent, charged_in=keys, c=cost)
def test_a_refund_gives_back_only_to_a_window_still_current(held, counters, charged_in, c):
    after = limits.moved(held, counters, charged_in, -c)
    for i in range(3):
        assert after[i] == counters[i] - (c if held[i] == charged_in[i] else 0)


@given(held=keys, counters=spent, now=keys, c=cost)
def test_a_charge_then_its_refund_in_the_same_windows_leaves_the_counters(held, counters,
                                                                          now, c):
    after = limits.charged(held, counters, now, c)
    assert limits.moved(now, after, now, -c) == limits.spent_in(held, counters, now)


@given(bound=bounds, counters=st.tuples(*[st.integers(0, 2 * MAX_MILLIS)] * 3))
def test_within_is_no_limit_passed_and_no_counter_past_the_range(bound, counters):
    passed = limits.passed(bound, counters)
    assert limits.within(bound, counters) == (
        passed is None and all(s <= MAX_MILLIS for s in counters))
    if passed is not None:  # the first, in the order day, week, month
        i = limits.WINDOWS.index(passed)
        assert bound[i] is not None and counters[i] > bound[i]
        assert all(b is None or s <= b for b, s in zip(bound[:i], counters[:i], strict=True))


def test_a_window_starts_where_the_one_before_it_ends_across_dst():
    # Budapest leaves summer time on 2026-10-25: that day is 25 hours long.
    tz = "Europe/Budapest"
    at = clock.to_us(datetime(2026, 10, 25, 12, tzinfo=UTC))
    day, week, month = limits.keys_at(at, tz)
    assert limits.ends_at("day", day, tz) - limits.starts_at("day", day, tz) == 25 * 3600 * 10**6
    assert limits.starts_at("day", day + 1, tz) == limits.ends_at("day", day, tz)
    assert limits.starts_at("week", week + 7, tz) == limits.ends_at("week", week, tz)
    assert limits.starts_at("month", month + 1, tz) == limits.ends_at("month", month, tz)
    assert clock.iso(limits.starts_at("month", month, tz)) == "2026-09-30T22:00:00Z"
    assert clock.iso(limits.ends_at("month", month, tz)) == "2026-10-31T23:00:00Z"


def test_keys_change_at_local_midnight_not_at_utc_midnight():
    tz = "Pacific/Auckland"  # UTC+13 in December
    with freeze_time("2026-12-04T10:59:59Z"):
        before = limits.keys_at(clock.now_us(), tz)
    with freeze_time("2026-12-04T11:00:00Z"):
        after = limits.keys_at(clock.now_us(), tz)
    assert after[0] == before[0] + 1  # a new local day
    assert after[2] == before[2]  # in the same month
