"""Calendar arithmetic of limit windows and refill plans.

Expected values are literals worked out by hand. Useful anchors: date(2026, 1, 1).toordinal()
is 739617 (a Thursday); month keys are year * 12 + month - 1, so March 2026 is 24314.
Europe/Budapest switches to CEST (+2) on 2026-03-29 at 01:00 UTC and back to CET (+1) on
2026-10-25 at 01:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from smscredits.schedule import (
    Rule,
    describe,
    due_periods,
    next_due,
    occurrence,
    parse_at,
    parse_on,
    period_of,
    window_keys,
    window_reset,
    zone,
)

BUD = "Europe/Budapest"
NY = "America/New_York"

# Day ordinals used below.
JAN_01_2026 = 739617
JAN_05_2026 = 739621  # Monday
JAN_11_2026 = 739627  # Sunday
JAN_12_2026 = 739628  # Monday
MAR_23_2026 = 739698  # Monday
MAR_27_2026 = 739702
MAR_28_2026 = 739703
MAR_29_2026 = 739704  # spring forward in Europe
MAR_30_2026 = 739705  # Monday
MAR_31_2026 = 739706
APR_01_2026 = 739707
OCT_24_2026 = 739913
OCT_25_2026 = 739914  # fall back in Europe
OCT_26_2026 = 739915
OCT_27_2026 = 739916
DEC_28_2026 = 739978  # Monday
DEC_31_2026 = 739981
JAN_01_2027 = 739982

# Month keys.
JAN_2026 = 24312
MAR_2026 = 24314
APR_2026 = 24315
DEC_2026 = 24323
JAN_2027 = 24324
FEB_2027 = 24325
FEB_2028 = 24337


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- zone ------------------------------------------------------------------------------------


def test_zone_is_cached_and_keyed_by_name():
    assert zone(BUD) is zone(BUD)
    assert zone(BUD).key == BUD


@pytest.mark.parametrize(
    "name", ["", "Mars/Olympus_Mons", "../x", "/etc/localtime", "Europe/../UTC", "America", "a\\b"]
)
def test_zone_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="unknown time zone"):
        zone(name)


# --- window keys -----------------------------------------------------------------------------


def test_window_keys_budapest_midnight_in_summer_time():
    # On 31 March Budapest is already on CEST (+2): local midnight is 22:00 UTC.
    assert window_keys(utc(2026, 3, 31, 21, 59, 59), BUD) == (MAR_31_2026, MAR_30_2026, MAR_2026)
    assert window_keys(utc(2026, 3, 31, 22, 0, 0), BUD) == (APR_01_2026, MAR_30_2026, APR_2026)


def test_window_keys_budapest_new_year_in_winter_time():
    # CET (+1): local midnight is 23:00 UTC. 31 Dec 2026 (Thu) and 1 Jan 2027 (Fri) share
    # the ISO week starting Monday 28 Dec, so only day and month change.
    before = window_keys(utc(2026, 12, 31, 22, 59, 59), BUD)
    after = window_keys(utc(2026, 12, 31, 23, 0, 0), BUD)
    assert before == (DEC_31_2026, DEC_28_2026, DEC_2026)
    assert after == (JAN_01_2027, DEC_28_2026, JAN_2027)


def test_window_keys_new_york_sunday_to_monday():
    # EST (-5): Monday 12 Jan 2026 starts at 05:00 UTC.
    assert window_keys(utc(2026, 1, 12, 4, 59, 59), NY) == (JAN_11_2026, JAN_05_2026, JAN_2026)
    assert window_keys(utc(2026, 1, 12, 5, 0, 0), NY) == (JAN_12_2026, JAN_12_2026, JAN_2026)
    # Already Monday in UTC, still Sunday in New York.
    assert window_keys(utc(2026, 1, 12, 3, 0), NY)[1] == JAN_05_2026
    assert window_keys(utc(2026, 1, 12, 3, 0), "UTC")[1] == JAN_12_2026


def test_window_keys_rejects_naive_datetime():
    with pytest.raises(ValueError, match="timezone-aware"):
        window_keys(datetime(2026, 1, 1), BUD)


# --- window reset ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "key", "tz", "expected"),
    [
        ("day", MAR_31_2026, BUD, utc(2026, 3, 31, 22)),
        ("day", MAR_28_2026, BUD, utc(2026, 3, 28, 23)),  # midnight before the switch: CET
        ("day", MAR_29_2026, BUD, utc(2026, 3, 29, 22)),  # the 23-hour day ends in CEST
        ("day", OCT_25_2026, BUD, utc(2026, 10, 25, 23)),  # the 25-hour day ends in CET
        ("week", JAN_05_2026, NY, utc(2026, 1, 12, 5)),
        ("week", MAR_30_2026, BUD, utc(2026, 4, 5, 22)),
        ("month", MAR_2026, BUD, utc(2026, 3, 31, 22)),
        ("month", DEC_2026, BUD, utc(2026, 12, 31, 23)),
        ("month", APR_2026, "UTC", utc(2026, 5, 1)),
        ("month", FEB_2028, "UTC", utc(2028, 3, 1)),
    ],
)
def test_window_reset(kind, key, tz, expected):
    assert window_reset(kind, key, tz) == expected


def test_window_reset_when_midnight_does_not_exist():
    # Havana springs forward at local midnight on 8 Mar 2026: 00:00 CST becomes 01:00 CDT,
    # i.e. 05:00 UTC, which is the first instant of 8 March.
    assert window_reset("day", MAR_28_2026 - 21, "America/Havana") == utc(2026, 3, 8, 5)


def test_window_reset_when_midnight_happens_twice():
    # Havana falls back at 01:00 CDT on 1 Nov 2026, so 00:00 occurs at 04:00 and 05:00 UTC;
    # the 31 Oct window ends at the first.
    assert window_reset("day", 739920, "America/Havana") == utc(2026, 11, 1, 4)


def test_window_reset_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        window_reset("year", 2026, "UTC")
    with pytest.raises(ValueError, match="Monday"):
        window_reset("week", MAR_31_2026, "UTC")


# --- Rule and parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("every", "on", "at_minute", "tz"),
    [
        ("year", None, 0, "UTC"),
        ("day", 1, 0, "UTC"),
        ("week", None, 0, "UTC"),
        ("week", 7, 0, "UTC"),
        ("week", True, 0, "UTC"),
        ("month", 0, 0, "UTC"),
        ("month", 32, 0, "UTC"),
        ("month", -2, 0, "UTC"),
        ("day", None, 1440, "UTC"),
        ("day", None, -1, "UTC"),
        ("day", None, 0, "Nowhere/Town"),
    ],
)
def test_rule_rejects_invalid_fields(every, on, at_minute, tz):
    with pytest.raises(ValueError):
        Rule(every, on, at_minute, tz)


@pytest.mark.parametrize(
    ("every", "text", "expected"),
    [
        ("day", None, None),
        ("week", None, 0),
        ("month", None, 1),
        ("week", "mon", 0),
        ("week", "MONDAY", 0),
        ("week", "Wed", 2),
        ("week", " Fri ", 4),
        ("week", "sunday", 6),
        ("week", "sun", 6),
        ("week", "1", 0),
        ("week", "7", 6),
        ("month", "1", 1),
        ("month", "15", 15),
        ("month", "31", 31),
        ("month", "last", -1),
        ("month", "LAST", -1),
    ],
)
def test_parse_on_accepts(every, text, expected):
    assert parse_on(every, text) == expected


@pytest.mark.parametrize(
    ("every", "text"),
    [
        ("week", "0"),
        ("week", "8"),
        ("week", "funday"),
        ("week", ""),
        ("week", "last"),
        ("month", "0"),
        ("month", "32"),
        ("month", "-1"),
        ("month", "first"),
        ("month", "٣"),
        ("month", "mon"),
        ("day", "mon"),
        ("day", "1"),
    ],
)
def test_parse_on_rejects_and_names_the_input(every, text):
    with pytest.raises(ValueError, match=repr(text)) as info:
        parse_on(every, text)
    assert "\n" not in str(info.value)


def test_parse_on_rejects_unknown_plan_kind():
    with pytest.raises(ValueError, match="'year'"):
        parse_on("year", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, 0), ("00:00", 0), ("06:30", 390), ("6:30", 390), ("09:00", 540), ("23:59", 1439)],
)
def test_parse_at_accepts(text, expected):
    assert parse_at(text) == expected


@pytest.mark.parametrize(
    "text", ["24:00", "12:60", "12", "noon", "", "12:5", "-1:00", "12:30:00", "１２:００", "6.30"]
)
def test_parse_at_rejects_and_names_the_input(text):
    with pytest.raises(ValueError, match=repr(text)):
        parse_at(text)


# --- occurrences across DST ------------------------------------------------------------------

DAILY_MIDNIGHT_BUD = Rule("day", None, 0, BUD)
DAILY_0230_BUD = Rule("day", None, 150, BUD)


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        (MAR_28_2026, utc(2026, 3, 27, 23)),
        (MAR_29_2026, utc(2026, 3, 28, 23)),  # midnight of the switch day is still CET
        (MAR_30_2026, utc(2026, 3, 29, 22)),
        (MAR_31_2026, utc(2026, 3, 30, 22)),
        (OCT_24_2026, utc(2026, 10, 23, 22)),
        (OCT_25_2026, utc(2026, 10, 24, 22)),  # midnight of the switch day is still CEST
        (OCT_26_2026, utc(2026, 10, 25, 23)),
        (OCT_27_2026, utc(2026, 10, 26, 23)),
    ],
)
def test_daily_midnight_occurrences_follow_local_midnight(period, expected):
    assert occurrence(DAILY_MIDNIGHT_BUD, period) == expected


def test_due_periods_one_per_local_day_across_spring_forward():
    due = due_periods(DAILY_MIDNIGHT_BUD, utc(2026, 3, 27, 12), utc(2026, 4, 1, 12))
    assert due == [MAR_28_2026, MAR_29_2026, MAR_30_2026, MAR_31_2026, APR_01_2026]


def test_due_periods_one_per_local_day_across_fall_back():
    due = due_periods(DAILY_MIDNIGHT_BUD, utc(2026, 10, 23, 12), utc(2026, 10, 27, 12))
    assert due == [OCT_24_2026, OCT_25_2026, OCT_26_2026, OCT_27_2026]
    # 23:30 local on the 25-hour day: the next local midnight is still 30 minutes away.
    assert due_periods(DAILY_MIDNIGHT_BUD, utc(2026, 10, 24, 22), utc(2026, 10, 25, 22, 30)) == []


def test_time_in_the_spring_gap_is_due_when_the_gap_ends():
    # 02:30 does not exist on 29 March; the clock jumps from 02:00 CET to 03:00 CEST at 01:00 UTC.
    assert occurrence(DAILY_0230_BUD, MAR_28_2026) == utc(2026, 3, 28, 1, 30)
    assert occurrence(DAILY_0230_BUD, MAR_29_2026) == utc(2026, 3, 29, 1, 0)
    assert occurrence(DAILY_0230_BUD, MAR_30_2026) == utc(2026, 3, 30, 0, 30)


def test_time_in_the_autumn_fold_is_due_at_its_first_occurrence():
    # 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET) on 25 October.
    assert occurrence(DAILY_0230_BUD, OCT_24_2026) == utc(2026, 10, 24, 0, 30)
    assert occurrence(DAILY_0230_BUD, OCT_25_2026) == utc(2026, 10, 25, 0, 30)
    assert occurrence(DAILY_0230_BUD, OCT_26_2026) == utc(2026, 10, 26, 1, 30)
    # The second 02:30 does not fire again.
    assert due_periods(DAILY_0230_BUD, utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)) == []


def test_gap_across_midnight_moves_the_due_time_into_the_next_day():
    # America/Nuuk jumps from Sat 28 Mar 23:00 (-02) to Sun 29 Mar 00:00 (-01) at 01:00 UTC.
    rule = Rule("day", None, 23 * 60 + 30, "America/Nuuk")
    assert occurrence(rule, MAR_27_2026) == utc(2026, 3, 28, 1, 30)
    assert occurrence(rule, MAR_28_2026) == utc(2026, 3, 29, 1, 0)
    assert occurrence(rule, MAR_29_2026) == utc(2026, 3, 30, 0, 30)
    # Still exactly one refill per period.
    due = due_periods(rule, utc(2026, 3, 28, 1, 30), utc(2026, 3, 30, 0, 30))
    assert due == [MAR_28_2026, MAR_29_2026]
    assert due_periods(rule, utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)) == [MAR_29_2026]


# --- monthly and weekly plans ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        (JAN_2026, utc(2026, 1, 31)),
        (APR_2026, utc(2026, 4, 30)),
        (FEB_2027, utc(2027, 2, 28)),
        (FEB_2028, utc(2028, 2, 29)),
    ],
)
def test_monthly_on_31_falls_back_to_the_last_day(period, expected):
    assert occurrence(Rule("month", 31, 0, "UTC"), period) == expected


def test_monthly_on_31_in_budapest_is_local_midnight():
    assert occurrence(Rule("month", 31, 0, BUD), FEB_2028) == utc(2028, 2, 28, 23)


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        (APR_2026, utc(2026, 4, 30, 9)),
        (DEC_2026, utc(2026, 12, 31, 9)),
        (FEB_2027, utc(2027, 2, 28, 9)),
        (FEB_2028, utc(2028, 2, 29, 9)),
    ],
)
def test_monthly_on_last_day(period, expected):
    assert occurrence(Rule("month", -1, 540, "UTC"), period) == expected


def test_monthly_on_day_15():
    assert occurrence(Rule("month", 15, 0, "UTC"), FEB_2027) == utc(2027, 2, 15)


def test_weekly_on_monday():
    rule = Rule("week", 0, 390, "UTC")
    assert occurrence(rule, JAN_05_2026) == utc(2026, 1, 5, 6, 30)
    assert occurrence(rule, JAN_12_2026) == utc(2026, 1, 12, 6, 30)
    assert period_of(rule, utc(2026, 1, 11, 23, 59)) == JAN_05_2026


def test_weekly_on_sunday_evening_in_new_york_stays_in_its_local_week():
    rule = Rule("week", 6, 23 * 60, NY)
    # Sunday 11 Jan 23:00 EST is already Monday 04:00 in UTC.
    assert occurrence(rule, JAN_05_2026) == utc(2026, 1, 12, 4)
    assert period_of(rule, utc(2026, 1, 12, 4)) == JAN_05_2026


def test_weekly_period_must_be_a_monday():
    with pytest.raises(ValueError, match="Monday"):
        occurrence(Rule("week", 0, 0, "UTC"), JAN_01_2026)


# --- due_periods and next_due ----------------------------------------------------------------

DAILY_0900_UTC = Rule("day", None, 540, "UTC")


def test_due_periods_three_missed_days():
    due = due_periods(DAILY_0900_UTC, utc(2026, 1, 1, 9), utc(2026, 1, 4, 10))
    assert due == [JAN_01_2026 + 1, JAN_01_2026 + 2, JAN_01_2026 + 3]


def test_due_periods_after_the_last_occurrence_is_empty():
    assert due_periods(DAILY_0900_UTC, utc(2026, 1, 4, 9), utc(2026, 1, 4, 23, 59)) == []
    assert due_periods(DAILY_0900_UTC, utc(2026, 1, 4, 9), utc(2026, 1, 4, 9)) == []
    assert due_periods(DAILY_0900_UTC, utc(2026, 1, 5), utc(2026, 1, 4)) == []


def test_due_periods_includes_an_occurrence_exactly_at_now():
    assert due_periods(DAILY_0900_UTC, utc(2026, 1, 3, 9), utc(2026, 1, 4, 9)) == [739620]


def test_due_periods_monthly_over_a_year():
    rule = Rule("month", -1, 0, "UTC")
    due = due_periods(rule, utc(2026, 1, 31), utc(2027, 1, 31))
    assert due == list(range(JAN_2026 + 1, JAN_2027 + 1))


def test_due_periods_daily_over_years_counts_days():
    # 2024-01-01 09:00 to 2028-01-01 09:00: 1461 days (one leap year, 2024).
    due = due_periods(DAILY_0900_UTC, utc(2024, 1, 1, 9), utc(2028, 1, 1, 9))
    assert len(due) == 1461
    assert due[-1] == 740347


def test_due_periods_rejects_naive_datetimes():
    with pytest.raises(ValueError, match="timezone-aware"):
        due_periods(DAILY_0900_UTC, datetime(2026, 1, 1), utc(2026, 1, 2))


@pytest.mark.parametrize(
    ("rule", "now", "expected"),
    [
        (DAILY_MIDNIGHT_BUD, utc(2026, 3, 28, 22, 59, 59), utc(2026, 3, 28, 23)),
        (DAILY_MIDNIGHT_BUD, utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
        (Rule("month", -1, 540, "UTC"), utc(2027, 2, 10), utc(2027, 2, 28, 9)),
        (Rule("month", -1, 540, "UTC"), utc(2027, 2, 28, 9), utc(2027, 3, 31, 9)),
        (Rule("week", 0, 390, "UTC"), utc(2026, 1, 5, 7), utc(2026, 1, 12, 6, 30)),
        (Rule("week", 0, 390, "UTC"), utc(2026, 1, 5, 6), utc(2026, 1, 5, 6, 30)),
    ],
)
def test_next_due(rule, now, expected):
    assert next_due(rule, now) == expected


def test_works_under_freezegun():
    with freeze_time("2026-03-29 00:30:00"):
        now = datetime.now(UTC)
        assert next_due(DAILY_0230_BUD, now) == utc(2026, 3, 29, 1)
        assert period_of(DAILY_0230_BUD, now) == MAR_29_2026
        assert window_keys(now, BUD) == (MAR_29_2026, MAR_23_2026, MAR_2026)
        assert due_periods(DAILY_0230_BUD, now - timedelta(days=2), now) == [
            MAR_27_2026,
            MAR_28_2026,
        ]


# --- describe --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (Rule("day", None, 0, BUD), "every day at 00:00 (Europe/Budapest)"),
        (Rule("week", 0, 390, "UTC"), "every week on Monday at 06:30 (UTC)"),
        (Rule("week", 6, 1380, NY), "every week on Sunday at 23:00 (America/New_York)"),
        (Rule("month", 31, 0, "UTC"), "every month on day 31 (or the last day) at 00:00 (UTC)"),
        (Rule("month", 29, 0, "UTC"), "every month on day 29 (or the last day) at 00:00 (UTC)"),
        (Rule("month", 5, 1439, "UTC"), "every month on day 5 at 23:59 (UTC)"),
        (Rule("month", -1, 540, "UTC"), "every month on the last day at 09:00 (UTC)"),
    ],
)
def test_describe(rule, text):
    assert describe(rule) == text


# --- properties ------------------------------------------------------------------------------

ZONES = [
    "UTC",
    BUD,
    NY,
    "America/Havana",  # DST switches at midnight
    "America/Santiago",
    "Asia/Beirut",
    "Australia/Lord_Howe",  # 30-minute DST
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "Africa/Casablanca",
]


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    every = draw(st.sampled_from(["day", "week", "month"]))
    on = {
        "day": st.none(),
        "week": st.integers(0, 6),
        "month": st.one_of(st.just(-1), st.integers(1, 31)),
    }[every]
    return Rule(every, draw(on), draw(st.integers(0, 1439)), draw(st.sampled_from(ZONES)))


instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
)


def _neighbours(rule: Rule, period: int) -> tuple[int, int]:
    step = 7 if rule.every == "week" else 1
    return period - step, period + step


@given(rule=rules(), at=instants)
def test_occurrence_lies_in_its_period_and_increases(rule, at):
    period = period_of(rule, at)
    before, after = _neighbours(rule, period)
    times = [occurrence(rule, p) for p in (before, period, after)]
    for p, t in zip((before, period, after), times, strict=True):
        assert t.utcoffset() == timedelta(0)
        assert period_of(rule, t) == p
    assert times[0] < times[1] < times[2]


@given(rule=rules(), at=instants)
def test_next_due_is_the_only_period_due_until_it(rule, at):
    t = next_due(rule, at)
    assert t > at
    assert due_periods(rule, at, t) == [period_of(rule, t)]
    assert due_periods(rule, at, t - timedelta(microseconds=1)) == []
