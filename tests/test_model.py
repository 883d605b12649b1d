"""Model test: a hypothesis state machine drives the core against a tiny in-memory model.

Rules add (positive and negative) and set credits, charge (singly and in batches, with and
without message ids, repeated ids included), refund (charged, already refunded and unknown
ids), change limits, overdrafts, prices and whether a user is disabled, schedule and run daily
refill plans (``--add`` / ``--top-up-to``, at times that fall in DST gaps and folds) and a
threshold plan, pause/resume/cancel plans, hold messages (alone and in batches with charges
and acts), settle them (at the parts held or others), void them, send delivery reports of
each gateway, expire them once the clock passed their ttl and refund settled ones (by
``refund`` and by a void), and move a frozen clock by minutes to days. Each
outcome is predicted exactly by the model (ints in thousandths of a credit; windows and refill
due times computed here with ``zoneinfo``, not with smscredits' calendar code) and compared.
After every step: balances, held amounts, limit windows, the credit log, the overdraft floor,
the plans' state and ``verify`` must all agree with the model. Runs on SQLite and (smaller) on
Postgres, each example on a fresh database; the bugs it found are kept as plain tests at the
end.
"""

from __future__ import annotations

import copy
import gc
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from smscredits import holds, ledger, pricing, reads, refills, verify
from smscredits.amounts import MAX_MILLIS
from smscredits.charging import Charger, ChargeRequest, ChargeResult
from smscredits.charging import refund as refund_message
from smscredits.charging.model import MessageOp
from smscredits.errors import BadInput, Conflict, InsufficientCredits, NotFound, SmsCreditsError
from smscredits.storage.engine import Db, open_db
from smscredits.storage.migrate import upgrade
from tests.conftest import PG_ENV, PG_SKIP, _pg_conninfo

WINDOWS = ("day", "week", "month")
ZONES = ("Europe/Budapest", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")
NAMES = ("alice", "bob")
GHOST = "ghost"  # never created: unknown_user

HU, US, GB, BAD = "+36301234567", "+12125551234", "+447400123456", "+999123456"
# The price keys each destination looks up, most specific first (longest prefix, country,
# default); BAD is not a valid number at all.
LOOKUP = {HU: ("+3630", "HU", "default"), US: ("+1212", "US", "default"), GB: ("GB", "default")}
PRICE_KEYS = ("default", "HU", "+3630", "+1212", "GB")
PRICES = st.sampled_from([0, 1, 250, 1000, 1500, 3000])
IDS = st.one_of(st.none(), st.none(), st.sampled_from(["m1", "m2", "m3", "m4"]))
# (who, to, parts, id): who 0-4 picks an existing user, 5 is an unknown one
REQUESTS = st.tuples(
    st.integers(0, 5),
    st.sampled_from((HU, US, HU, US, GB, BAD)),
    st.integers(1, 3),
    IDS,
)
AMOUNTS = st.integers(-40, 40).map(lambda n: n * 250) | st.integers(-20_000, 20_000)
TARGETS = st.integers(-10, 100).map(lambda n: n * 500) | st.integers(-20_000, 60_000)
LIMIT_VALUES = st.none() | st.integers(0, 16).map(lambda n: n * 500)
# Daily refill times: 00:00, and wall times that fall in DST gaps (02:15, 02:30 in spring)
# and folds (01:30 in New York, 02:15/02:30 in Budapest in autumn).
AT_TIMES = (None, "01:30", "02:15", "02:30", "09:00", "23:45")
DST_TIMES = st.sampled_from(("01:30", "02:15", "02:30"))
REFILLS = st.integers(1, 20).map(lambda n: n * 1000)
THRESHOLDS = st.integers(0, 20).map(lambda n: n * 1000)
TICKS = st.one_of(
    st.integers(1, 59).map(lambda m: timedelta(minutes=m)),
    st.integers(1, 23).map(lambda h: timedelta(hours=h)),
    st.integers(1, 9).map(lambda d: timedelta(days=d)),
)
# Amounts at the edge of the documented range (|x| <= MAX_MILLIS) and just past it.
OUT = "amount_out_of_range"
NEAR_MAX = st.sampled_from([MAX_MILLIS, MAX_MILLIS - 1, MAX_MILLIS - 999, MAX_MILLIS // 2,
                            4 * 10**17, 10**17]) | st.integers(MAX_MILLIS - 50_000, MAX_MILLIS)
HUGE = NEAR_MAX | st.sampled_from([MAX_MILLIS + 1, 10**19])  # the Python API takes any int
SIGNED_HUGE = HUGE | HUGE.map(lambda n: -n)
# Each zone's clock changes (in Kolkata, which has none: a year end and a leap day). A
# machine often starts up to two days before one of its first user's, so that daily plans at
# 01:30, 02:15 and 02:30 meet the DST gaps and folds, and the windows the short days.
CHANGES = {
    "Europe/Budapest": (datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
                        datetime(2025, 10, 26, 1, 0, tzinfo=UTC)),
    "America/New_York": (datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
                         datetime(2025, 11, 2, 6, 0, tzinfo=UTC)),
    "Asia/Kolkata": (datetime(2025, 12, 31, 18, 30, tzinfo=UTC),
                     datetime(2024, 2, 28, 18, 30, tzinfo=UTC)),
    "Australia/Lord_Howe": (datetime(2025, 10, 4, 15, 30, tzinfo=UTC),  # 02:00 -> 02:30
                            datetime(2026, 4, 4, 15, 0, tzinfo=UTC)),  # 02:00 -> 01:30
}
NEAR_A_CHANGE = st.tuples(st.integers(0, 1), st.integers(1, 48))  # (which, hours before it)
STARTS = st.one_of(
    NEAR_A_CHANGE,
    NEAR_A_CHANGE,
    st.sampled_from([
        datetime(2025, 12, 31, 20, 0, tzinfo=UTC),  # a year end
        datetime(2024, 2, 28, 22, 0, tzinfo=UTC),  # a leap day
        datetime(2026, 1, 4, 21, 0, tzinfo=UTC),  # a Sunday evening: a week's end
        datetime(2026, 1, 31, 21, 0, tzinfo=UTC),  # a month's end on a Saturday
    ]),
    st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31),
                 timezones=st.just(UTC)),
)


# Holds: the ttl in force (µs), a hold's own ttl, the parts a settle reports.
SECOND = 1_000_000
RULES = st.builds(
    holds.Rules,
    ttl_us=st.sampled_from([30 * 60, 6 * 3600, 48 * 3600]).map(lambda s: s * SECOND),
    expiry=st.sampled_from([holds.SETTLE, holds.VOID]),
    void_settled=st.sampled_from(["refund", "refund", "refuse"]),
)
HOLD_TTLS = st.none() | st.sampled_from([10 * 60, 24 * 3600]).map(lambda s: s * SECOND)
HOLD_REQUESTS = st.tuples(REQUESTS, HOLD_TTLS)
SETTLE_PARTS = st.none() | st.integers(1, 4)
# What a delivery report does, by the gateways' documentation (None: a status unknown to
# them): Kannel's DLR type bits (1 delivered, 2 failed, 4 queued, 8 accepted, 16 rejected;
# a combination: delivered wins, then a failure), Jasmin's and SMPP 3.4's receipt states
# and Jasmin's submit statuses.
REPORTS = {
    ("kannel", "1"): "settle", ("kannel", "2"): "void", ("kannel", "4"): "ignore",
    ("kannel", "8"): "ignore", ("kannel", "16"): "void", ("kannel", "9"): "settle",
    ("kannel", "12"): "ignore", ("kannel", "24"): "void", ("kannel", "64"): None,
    ("jasmin", "DELIVRD"): "settle", ("jasmin", "UNDELIV"): "void",
    ("jasmin", "ESME_ROK"): "ignore", ("jasmin", "ESME_RTHROTTLED"): "void",
    ("jasmin", "enroute"): "ignore",
    ("smpp", "ACCEPTD"): "settle", ("smpp", "delivrd"): "settle", ("smpp", "EXPIRED"): "void",
    ("smpp", "REJECTD"): "void", ("smpp", "UNKNOWN"): "ignore", ("smpp", "BOGUS"): None,
}
DLRS = st.sampled_from(sorted(REPORTS))
FINAL = ("settled", "voided", "refunded")
ACT_IDS = st.sampled_from(["m1", "m2", "m3", "m4", "nope"])
# One item of a mixed batch: a charge, a hold, or an act on a message id.
BATCH_ITEMS = st.one_of(
    REQUESTS.map(lambda r: ("charge", r)),
    HOLD_REQUESTS.map(lambda r: ("hold", r)),
    st.tuples(st.sampled_from(["settle", "void", "refund"]), ACT_IDS, SETTLE_PARTS),
    st.tuples(st.just("dlr"), ACT_IDS, DLRS),
)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def dec(millis: int) -> Decimal:
    return Decimal(millis) / 1000


def amount_text(millis: int) -> str:
    return f"{millis // 1000}.{millis % 1000:03d}"


# -- the model's own calendar (zoneinfo only) ----------------------------------------------


def local_date(at: datetime, tz: str) -> date:
    return at.astimezone(ZoneInfo(tz)).date()


def same_window(window: str, a: date, b: date) -> bool:
    if window == "day":
        return a == b
    if window == "week":
        return a.isocalendar()[:2] == b.isocalendar()[:2]
    return (a.year, a.month) == (b.year, b.month)


def window_end(window: str, today: date, tz: str) -> str:
    """When the window containing ``today`` resets: the next unit's local midnight, in UTC."""
    if window == "day":
        nxt = today + timedelta(days=1)
    elif window == "week":
        nxt = today + timedelta(days=7 - today.weekday())
    else:
        nxt = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    at = datetime.combine(nxt, time(), tzinfo=ZoneInfo(tz)).astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def occurrence(day: date, minute: int, tz: str) -> datetime:
    """When a daily plan at ``minute`` past local midnight is due on ``day``, in UTC.

    A wall time that happens twice (DST fold) is due the first time; one that does not happen
    (DST gap) is due when the clocks jump past it.
    """
    z = ZoneInfo(tz)
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    hits = []
    for fold in (0, 1):
        t = wall.replace(tzinfo=z, fold=fold).astimezone(UTC)
        if t.astimezone(z).replace(tzinfo=None) == wall:
            hits.append(t)
    if hits:
        return min(hits)
    t = wall.replace(tzinfo=z, fold=1).astimezone(UTC) - timedelta(hours=2)
    while t.astimezone(z).replace(tzinfo=None) <= wall:
        t += timedelta(minutes=1)
    return t


def out_of_range(*amounts: int) -> bool:
    return any(abs(a) > MAX_MILLIS for a in amounts)


def refused_out_of_range(call: Any, *args: Any, **kwargs: Any) -> None:
    """The agreed refusal of an amount past the documented range: exit 2, reason
    ``amount_out_of_range``, a message naming the bound. (The invariants then check that
    nothing was written.)"""
    with pytest.raises(SmsCreditsError) as e:
        call(*args, **kwargs)
    assert (e.value.code, int(e.value.exit_code)) == (OUT, 2), e.value
    assert "999999999999999.999" in e.value.message, e.value.message
    event(f"refused: {OUT} by {call.__name__}")


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stands(result: ChargeResult) -> tuple[Any, ...]:
    """What a replay of a hold's id shows of the message as it stands."""
    return (result.status, result.reason, result.cost, result.parts, result.balance,
            result.held, result.expires_at)


def as_it_stands(msg: MMessage) -> tuple[Any, ...]:
    """The model's side of ``stands``, for a hold's message: its status as it is now (a
    settled hold refunded shows as refunded; only a refunded charge replays as charged)."""
    held = msg.status == "held"
    assert msg.cost is not None and msg.balance is not None and msg.expires_at is not None
    return (msg.status, msg.reason, dec(msg.cost),
            msg.parts, dec(msg.balance), dec(msg.cost) if held else None,
            iso(msg.expires_at) if held else None)


def error(reason: str) -> dict[str, Any]:
    return {"status": "error", "reason": reason}


def replay_fields(result: ChargeResult) -> tuple[Any, ...]:
    """What a replay must repeat of the first result."""
    return (result.status, result.reason, result.id, result.to, result.cost, result.parts,
            result.price, result.rule, result.country, result.balance)


# -- the model -----------------------------------------------------------------------------


@dataclass
class MUser:
    tz: str
    balance: int
    overdraft: int | None  # None: unlimited
    limits: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(WINDOWS))
    disabled: bool = False
    held: int = 0  # reserved by open holds


@dataclass
class MCharge:
    user: str
    cost: int
    at: datetime
    refunded: bool = False


@dataclass
class MMessage:
    """A message id's row: its first outcome, and for a hold what became of it."""

    user: str
    cost: int | None  # a hold's: what it holds, then what it was settled at (voided: 0)
    status: str  # charged | rejected | refunded | held | settled | voided
    reason: str | None
    # Counted in the windows (a hold's cost while held, then what it was settled at); a
    # refund or void takes it out.
    charge: MCharge | None = None
    first: ChargeResult | None = None  # what the first attempt returned
    balance: int | None = None  # the balance its last result told
    # A hold's: the price a part, its parts, the amount held and when it expires.
    price: int = 0
    parts: int = 0
    held: int | None = None
    expires_at: datetime | None = None


@dataclass
class MPlan:
    id: int
    user: str
    start_after: datetime
    add: int | None
    top: int | None
    below: int | None = None  # a threshold plan
    minute: int = 0  # daily plans: due at this many minutes after local midnight
    status: str = "active"
    armed: bool = True
    last_day: date | None = None  # daily plans: the last period applied
    crossings: int = 0  # threshold plans: how often it fired


# One period of a run: (plan, period, amount, balance, applied, skipped).
Applied = tuple[int, str, Decimal, Decimal, bool, str | None]


@dataclass
class Outcome:
    """What a charge must return: charged, rejected (reason), replayed or a conflict."""

    status: str
    reason: str | None = None
    cost: int | None = None
    balance: int | None = None
    replayed: bool = False
    first: ChargeResult | None = None  # a replay returns the first result
    refusal: dict[str, Any] | None = None  # a refusal's numbers, resets_at apart
    message: MMessage | None = None  # a new hold's, or a hold's replayed as it stands


class ModelMachine(RuleBasedStateMachine):
    """The state machine; subclasses provide the database."""

    def __init__(self) -> None:
        super().__init__()
        self._freezer: Any = None  # entered by setup, exited by teardown
        self.db = self.open_database()
        self.charger = Charger(self.db)
        self.users: dict[str, MUser] = {}
        self.prices: dict[str, int] = {}
        self.messages: dict[str, MMessage] = {}
        self.charges: list[MCharge] = []
        self.plans: dict[int, MPlan] = {}
        self.refundable: list[str] = []  # every id a charge returned, for refunds

    # subclasses: a fresh, migrated database per example
    def open_database(self) -> Db:  # pragma: no cover
        raise NotImplementedError

    def close_database(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def teardown(self) -> None:
        try:
            if self._freezer is not None:
                # freezegun pops its clock before it unpatches modules; a gc callback of
                # hypothesis's (timed with a patched perf_counter) must not run in between.
                gc.disable()
                try:
                    self._freezer.__exit__(None, None, None)
                finally:
                    gc.enable()
        finally:
            self.charger.release()  # its connection: Postgres has a limit on them
            self.db.dispose()
            self.close_database()

    # -- setup ---------------------------------------------------------------------------

    @initialize(
        start=STARTS,
        accounts=st.lists(
            st.tuples(st.sampled_from(ZONES), st.integers(0, 30).map(lambda n: n * 500),
                      st.sampled_from([0, 5_000, None]),
                      st.dictionaries(st.sampled_from(WINDOWS), LIMIT_VALUES)),
            min_size=1, max_size=2,
        ),
        prices=st.fixed_dictionaries(
            {"HU": PRICES, "+1212": PRICES}, optional={"default": PRICES, "+3630": PRICES}
        ),
        daily=st.lists(st.tuples(st.integers(0, 1), DST_TIMES | st.sampled_from(AT_TIMES),
                                 st.booleans(), REFILLS), max_size=2),
        threshold=st.none() | st.tuples(st.integers(0, 1), THRESHOLDS, st.booleans(), REFILLS),
        rules=RULES,
    )
    def setup(self, start: datetime | tuple[int, int],
              accounts: list[tuple[str, int, int | None, dict[str, int | None]]],
              prices: dict[str, int], daily: list[tuple[int, str | None, bool, int]],
              threshold: tuple[int, int, bool, int] | None, rules: holds.Rules) -> None:
        if isinstance(start, tuple):
            start = CHANGES[accounts[0][0]][start[0]] - timedelta(hours=start[1])
        self.now = start
        self.db.hold_rules = self.rules = rules
        self._freezer = freeze_time(start)
        self.frozen = self._freezer.__enter__()
        for key, price in prices.items():
            pricing.set_price(self.db, key, amount_text(price))
            self.prices[key] = price
        for name, (tz, initial, overdraft, caps) in zip(NAMES, accounts, strict=False):
            ledger.add_user(self.db, name, tz=tz)
            account = ledger.create_power(self.db, name, initial=initial, overdraft=overdraft)
            assert account.balance == dec(initial)
            self.users[name] = MUser(tz, initial, overdraft)
            if caps:
                self.set_limits(NAMES.index(name), caps)
        for plan in daily:
            self.schedule_daily(*plan)
        if threshold is not None:
            self.schedule_threshold(*threshold)

    def pick(self, index: int) -> str:
        return sorted(self.users)[index % len(self.users)]

    # -- clock -----------------------------------------------------------------------------

    @rule(delta=TICKS)
    def move_clock(self, delta: timedelta) -> None:
        self.frozen.tick(delta)
        self.now += delta

    # -- credits ---------------------------------------------------------------------------

    @rule(who=st.integers(0, 1), amount=AMOUNTS)
    def add_credits(self, who: int, amount: int) -> None:
        name = self.pick(who)
        u = self.users[name]
        if amount == 0:
            with pytest.raises(BadInput):
                ledger.add_credits(self.db, name, amount)
            return
        if out_of_range(amount):  # the amount itself: checked first
            refused_out_of_range(ledger.add_credits, self.db, name, amount)
            return
        # What is held stays payable: a subtraction takes only what is available.
        if amount < 0 and u.overdraft is not None and \
                u.balance - u.held + amount < -u.overdraft:
            with pytest.raises(InsufficientCredits):
                ledger.add_credits(self.db, name, amount)
            return
        if out_of_range(u.balance + amount):
            refused_out_of_range(ledger.add_credits, self.db, name, amount)
            return
        change = ledger.add_credits(self.db, name, amount, note="model")
        u.balance += amount
        if amount > 0:
            self.rearm(name)
        assert (change.amount, change.balance) == (dec(amount), dec(u.balance))

    @rule(who=st.integers(0, 1), balance=TARGETS)
    def set_credits(self, who: int, balance: int) -> None:
        target = balance
        name = self.pick(who)
        u = self.users[name]
        if out_of_range(target):  # the target itself: checked before the overdraft
            refused_out_of_range(ledger.set_credits, self.db, name, target)
            return
        if u.overdraft is not None and target - u.held < -u.overdraft:
            with pytest.raises(InsufficientCredits):
                ledger.set_credits(self.db, name, target)
            return
        if out_of_range(target - u.balance):  # the journaled difference
            refused_out_of_range(ledger.set_credits, self.db, name, target)
            return
        change = ledger.set_credits(self.db, name, target)
        diff, u.balance = target - u.balance, target
        if diff > 0:
            self.rearm(name)
        assert (change.amount, change.balance) == (dec(diff), dec(target))

    @rule(who=st.integers(0, 1), overdraft=st.sampled_from([0, 2_000, 10_000, None]))
    def set_overdraft(self, who: int, overdraft: int | None) -> None:
        name = self.pick(who)
        u = self.users[name]
        if overdraft is not None and out_of_range(overdraft):
            refused_out_of_range(ledger.set_overdraft, self.db, name, overdraft)
            return
        if overdraft is not None and u.balance - u.held < -overdraft:
            with pytest.raises(Conflict):
                ledger.set_overdraft(self.db, name, overdraft)
            return
        account = ledger.set_overdraft(self.db, name, overdraft)
        u.overdraft = overdraft
        assert account.overdraft == (None if overdraft is None else dec(overdraft))

    @rule(who=st.integers(0, 1), disabled=st.booleans())
    def disable(self, who: int, disabled: bool) -> None:
        name = self.pick(who)
        assert ledger.set_disabled(self.db, name, disabled).disabled is disabled
        self.users[name].disabled = disabled

    @rule(key=st.sampled_from(PRICE_KEYS), price=PRICES)
    def set_price(self, key: str, price: int) -> None:
        pricing.set_price(self.db, key, amount_text(price))
        self.prices[key] = price

    @rule(who=st.integers(0, 1),
          changes=st.dictionaries(st.sampled_from(WINDOWS), LIMIT_VALUES, min_size=1))
    def set_limits(self, who: int, changes: dict[str, int | None]) -> None:
        name = self.pick(who)
        shown = ledger.set_limits(self.db, name, changes)
        self.users[name].limits.update(changes)
        self.check_limits(name, shown)

    # -- charges and refunds ---------------------------------------------------------------

    def expect_charge(self, user: str, to: str, parts: int, msg_id: str | None,
                      hold: bool = False, ttl: int | None = None) -> Outcome:
        """Predict one charge (with ``hold``: a hold) and apply it to the model."""
        cost: int | None = None
        price = 0
        reason: str | None = None
        if to == BAD:
            reason = "invalid_number"
        else:
            price = next((self.prices[k] for k in LOOKUP[to] if k in self.prices), None)
            if price is None:
                reason = "no_price"
            else:
                cost = price * parts
                if out_of_range(cost):  # refused with the quote, before the user
                    reason = OUT
        if msg_id is not None and msg_id in self.messages:
            first = self.messages[msg_id]
            # A hold that ended (settled at other parts, voided) no longer has the cost it
            # was held at: a hold sent again with its id replays it whatever it costs now.
            same_cost = cost is None or first.cost is None or first.cost == cost or (
                hold and first.held is not None and first.status in FINAL)
            if first.user != user or not same_cost:
                return Outcome("error", "conflict")
            # A hold's id replays the message as it stands; a refunded charge was charged.
            status = ("charged" if first.status == "refunded" and first.held is None
                      else first.status)
            return Outcome(status, first.reason, first.cost, replayed=True, first=first.first,
                           message=first if first.held is not None else None)
        u = self.users.get(user)
        # The documented order: number, price, user, then balance and the limit windows.
        if reason is None and u is None:
            reason = "unknown_user"
        if reason is None and u is not None and u.disabled:
            reason = "user_disabled"
        refusal: dict[str, Any] | None = None
        if reason is None and u is not None and cost is not None:
            # What a charge or a hold can take: balance - held + overdraft.
            if u.overdraft is not None and u.balance - u.held - cost < -u.overdraft:
                reason = "insufficient_credits"
                refusal = {"cost": dec(cost), "available": dec(u.balance - u.held + u.overdraft),
                           "balance": dec(u.balance), "overdraft": dec(u.overdraft)}
                if u.held:
                    refusal["held"] = dec(u.held)
            elif out_of_range(u.balance - u.held - cost):  # an unlimited overdraft
                reason = OUT
            else:
                spent = self.spent(user)
                for window, why in zip(WINDOWS, ("daily_limit", "weekly_limit",
                                                 "monthly_limit"), strict=True):
                    limit = u.limits[window]
                    if limit is not None and spent[window] + cost > limit:
                        reason = why
                        refusal = {"window": window, "limit": dec(limit),
                                   "spent": dec(spent[window]), "cost": dec(cost)}
                        break
                if reason is None and out_of_range(*(spent[w] + cost for w in WINDOWS)):
                    reason = OUT  # a window counter would leave the range
        if reason is not None:
            if msg_id is not None:
                # A cost past the range cannot be recorded: its refusal keeps no cost (a retry
                # replays it whatever it would cost now).
                kept = None if cost is not None and out_of_range(cost) else cost
                self.messages[msg_id] = MMessage(user, kept, "rejected", reason)
            # What an out-of-range cost is shown as is not specified: not compared.
            return Outcome("rejected", reason, None if reason == OUT else cost,
                           refusal=refusal)
        assert u is not None and cost is not None
        charge = MCharge(user, cost, self.now)
        self.charges.append(charge)
        if hold:  # reserved: the windows count it, the balance does not move
            u.held += cost
            expires = self.now + timedelta(microseconds=self.rules.ttl_us if ttl is None
                                           else ttl)
            held = MMessage(user, cost, "held", None, charge, balance=u.balance, price=price,
                            parts=parts, held=cost, expires_at=expires)
            if msg_id is not None:
                self.messages[msg_id] = held
            return Outcome("held", None, cost, u.balance, message=held)
        u.balance -= cost
        if msg_id is not None:
            self.messages[msg_id] = MMessage(user, cost, "charged", None, charge)
        self.fire_thresholds(user, "a charge")
        if msg_id is not None:
            self.messages[msg_id].balance = u.balance
        return Outcome("charged", None, cost, u.balance)

    def fire_thresholds(self, user: str, by: str) -> None:
        """After the balance went down: an armed threshold plan it passed under fires."""
        u = self.users[user]
        for plan in self.user_plans(user, threshold=True):
            if plan.status == "active" and plan.armed and u.balance < (plan.below or 0):
                self.apply(plan, plan.crossings + 1)
                event(f"threshold plan fired by {by}")

    def check_result(self, result: ChargeResult, want: Outcome, req: ChargeRequest) -> None:
        got = (result.status, result.reason, result.replayed)
        event(f"charge: {'replayed ' if want.replayed else ''}{want.status} {want.reason or ''}")
        assert got == (want.status, want.reason, want.replayed), (req, result, want)
        if want.status == "error":
            return
        if want.cost is not None:
            assert result.cost == dec(want.cost), (req, result, want)
        if want.replayed and want.message is not None:
            assert stands(result) == as_it_stands(want.message), (req, result, want)
            return
        if want.replayed:
            assert want.first is not None
            assert replay_fields(result) == replay_fields(want.first), (req, result, want)
            return
        if req.id is not None:
            self.messages[req.id].first = result
        self.check_refusal(result, want, req)
        if want.status in ("charged", "held"):
            assert result.balance == dec(want.balance or 0), (req, result, want)
            if req.id is None:
                assert result.id is not None and result.id not in self.messages
                self.messages[result.id] = want.message or MMessage(
                    req.user, want.cost, "charged", None, self.charges[-1],
                    balance=want.balance)
            assert result.id is not None
            self.refundable.append(result.id)
        if want.status == "held":
            assert want.message is not None and want.message.expires_at is not None
            assert (result.held, result.expires_at) == (
                dec(want.message.cost or 0), iso(want.message.expires_at)), (req, result)

    def check_refusal(self, result: ChargeResult, want: Outcome, req: ChargeRequest) -> None:
        """A refusal by the balance or a limit carries the numbers that decided it; the reset
        of the window is an instant in UTC (its exact value is the schedule's tests')."""
        got = None if result.refusal is None else dict(result.refusal)
        resets_at = None if got is None else got.pop("resets_at", None)
        assert got == want.refusal, (req, result, want)
        if want.refusal is not None and "window" in want.refusal:
            assert isinstance(resets_at, str) and resets_at.endswith("Z"), (req, result)
            reset = datetime.fromisoformat(resets_at.replace("Z", "+00:00"))
            assert reset > self.now, (req, result)

    def request(self, req: tuple[int, str, int, str | None]) -> ChargeRequest:
        who, to, parts, msg_id = req
        return ChargeRequest(GHOST if who == 5 else self.pick(who), to, parts=parts, id=msg_id)

    @rule(req=REQUESTS)
    def charge(self, req: tuple[int, str, int, str | None]) -> None:
        request = self.request(req)
        want = self.expect_charge(request.user, request.to, request.parts or 0, request.id)
        self.check_result(self.charger.charge(request), want, request)

    @rule(req=REQUESTS)
    def charge_again(self, req: tuple[int, str, int, str | None]) -> None:
        """Charging is what a gateway does most: give it twice the weight of other rules."""
        self.charge(req)

    @rule(reqs=st.lists(REQUESTS, min_size=2, max_size=4))
    def charge_batch(self, reqs: list[tuple[int, str, int, str | None]]) -> None:
        requests = [self.request(r) for r in reqs]
        results = self.charger.charge_batch(requests)
        assert len(results) == len(requests)
        for request, result in zip(requests, results, strict=True):
            want = self.expect_charge(request.user, request.to, request.parts or 0, request.id)
            self.check_result(result, want, request)

    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        msg_id = data.draw(st.sampled_from([*self.refundable, *self.messages, "nope"]),
                           label="refund id")
        msg = self.messages.get(msg_id)
        event(f"refund: {'unknown' if msg is None else msg.status}")
        if msg is None or msg.status == "rejected":
            with pytest.raises(NotFound) as e:
                refund_message(self.db, msg_id)
            assert e.value.code == "unknown_message"
            return
        if msg.status in ("refunded", "held", "voided"):
            with pytest.raises(Conflict) as e:
                refund_message(self.db, msg_id)
            assert e.value.code == {"refunded": "already_refunded", "held": "still_held",
                                    "voided": "not_held"}[msg.status]
            return
        assert msg.charge is not None and msg.cost is not None
        if out_of_range(self.users[msg.user].balance + msg.cost):
            refused_out_of_range(refund_message, self.db, msg_id)
            return
        done = refund_message(self.db, msg_id)
        msg.status, msg.charge.refunded = "refunded", True
        u = self.users[msg.user]
        u.balance += msg.cost
        self.rearm(msg.user)
        assert (done.amount, done.balance, done.user) == (dec(msg.cost), dec(u.balance),
                                                          msg.user)

    # -- holds -------------------------------------------------------------------------------

    def hold_request(self, req: tuple[tuple[int, str, int, str | None], int | None]
                     ) -> ChargeRequest:
        request = self.request(req[0])
        request.hold, request.ttl = True, req[1]
        return request

    def expect_request(self, request: ChargeRequest) -> Outcome:
        return self.expect_charge(request.user, request.to, request.parts or 0, request.id,
                                  request.hold, request.ttl)

    @rule(req=HOLD_REQUESTS)
    def hold(self, req: tuple[tuple[int, str, int, str | None], int | None]) -> None:
        request = self.hold_request(req)
        want = self.expect_request(request)
        self.check_result(self.charger.hold(request), want, request)

    @rule(req=HOLD_REQUESTS)
    def hold_again(self, req: tuple[tuple[int, str, int, str | None], int | None]) -> None:
        """Holds, what most acts need first: twice the weight of other rules."""
        self.hold(req)

    def act_op(self, item: tuple[str, str, Any], user: int | None = None) -> MessageOp:
        kind, msg_id, extra = item
        name = None if user is None else self.pick(user)
        if kind == "dlr":
            return MessageOp("dlr", msg_id, user=name, source=extra[0], status=extra[1])
        return MessageOp(kind, msg_id, user=name, parts=extra)

    def expect_act(self, op: MessageOp) -> dict[str, Any]:
        """Predict an act on a message and apply it to the model: the fields its result must
        have."""
        msg = self.messages.get(op.id)
        if msg is None or (msg.status == "rejected" and op.op != "dlr"):
            return error("unknown_message")
        if op.user is not None and op.user != msg.user:
            return error("conflict")
        kind = op.op
        if kind == "dlr":
            action = REPORTS[(op.source or "", op.status or "")]
            if action is None:
                return error("unknown_status")
            if msg.status != "held":  # a report twice or late: only `void` refunds
                return self.standing(msg, replayed=msg.status in FINAL)
            if action == "ignore":
                return self.standing(msg, replayed=False)
            kind = action
        if kind == "refund" or (op.op == "void" and msg.status == "settled"):
            if kind == "void" and self.rules.void_settled == "refuse":
                return error("already_settled")
            return self.expect_refund(msg)
        if msg.status in FINAL:
            return self.standing(msg, replayed=True)
        if msg.status != "held":
            return error("not_held")
        if kind == "void":
            return self.end_hold(msg, "voided", 0, msg.parts)
        parts = msg.parts if op.parts is None else op.parts
        cost = msg.price * parts
        if cost > (msg.held or 0) and not self.can_take_more(msg, cost - (msg.held or 0)):
            return self.end_hold(msg, "settled", msg.held or 0, msg.parts, "settled_at_held")
        return self.end_hold(msg, "settled", cost, parts)

    @staticmethod
    def standing(msg: MMessage, *, replayed: bool) -> dict[str, Any]:
        """An act that finds its work done (replayed) or nothing to do (ignored)."""
        held = msg.status == "held"
        return {"status": msg.status if replayed else "ignored", "reason": None,
                "replayed": replayed, "cost": None if msg.cost is None else dec(msg.cost),
                "balance": None if msg.balance is None else dec(msg.balance),
                "held": dec(msg.cost or 0) if held else None,
                "expires_at": iso(msg.expires_at) if held and msg.expires_at else None}

    def can_take_more(self, msg: MMessage, extra: int) -> bool:
        """Whether a settle may take ``extra`` beyond the hold: within what is available
        and within the limit of each of the hold's windows still current."""
        u = self.users[msg.user]
        floor = MAX_MILLIS if u.overdraft is None else u.overdraft
        if u.balance - u.held - extra < -floor:
            return False
        assert msg.charge is not None
        spent = self.spent(msg.user)
        day, today = local_date(msg.charge.at, u.tz), local_date(self.now, u.tz)
        for window in WINDOWS:
            limit = u.limits[window]
            if same_window(window, day, today) and \
                    spent[window] + extra > (MAX_MILLIS if limit is None else limit):
                event(f"settle: more than held refused by the {window}'s limit")
                return False
        return True

    def end_hold(self, msg: MMessage, status: str, cost: int, parts: int,
                 reason: str | None = None, *, expired: bool = False) -> dict[str, Any]:
        """A hold settled at ``cost`` or voided: held released, the cost taken, the windows
        moved by the difference (a void: the hold no longer counts)."""
        u = self.users[msg.user]
        held = msg.held or 0
        assert msg.status == "held" and msg.charge is not None
        u.held -= held
        u.balance -= cost
        if status == "voided":
            msg.charge.refunded = True
        msg.charge.cost = cost
        msg.status, msg.cost, msg.parts = status, cost, parts
        msg.reason = "expired" if expired else reason
        if cost:
            self.fire_thresholds(msg.user, f"a {status} hold")
        msg.balance = u.balance
        event(f"hold {status}{' (expired)' if expired else ''} {reason or ''}")
        return {"status": status, "reason": msg.reason, "replayed": False, "cost": dec(cost),
                "parts": parts, "balance": dec(u.balance), "held": dec(held)}

    def expect_refund(self, msg: MMessage) -> dict[str, Any]:
        if msg.status == "refunded":
            return error("already_refunded")
        if msg.status in ("held", "voided"):
            return error("still_held" if msg.status == "held" else "not_held")
        u = self.users[msg.user]
        assert msg.cost is not None and msg.charge is not None
        if out_of_range(u.balance + msg.cost):
            return error(OUT)
        u.balance += msg.cost
        msg.status, msg.charge.refunded = "refunded", True
        self.rearm(msg.user)
        event("refund of a settled hold" if msg.held is not None else "refund of a charge")
        return {"status": "refunded", "replayed": False, "cost": dec(msg.cost),
                "balance": dec(u.balance), "held": None}

    def check_act(self, result: ChargeResult, want: dict[str, Any], op: MessageOp) -> None:
        got = {key: getattr(result, key) for key in want}
        event(f"act: {op.op} {want['status']} {want.get('reason') or ''}")
        assert got == want, (op, result)

    def act(self, op: MessageOp) -> None:
        want = self.expect_act(op)
        self.check_act(self.charger.charge_batch([op])[0], want, op)

    def some_id(self, data: st.DataObject) -> str:
        """A message id: most often one held or settled, else any known, or an unknown one. (In
        the order they were made: a generated id is random, its place must not be.)"""
        ids = st.sampled_from([*self.messages, "nope"])
        for status in ("settled", "held"):
            some = [i for i, m in self.messages.items() if m.status == status]
            ids = st.sampled_from(some) | ids if some else ids
        return data.draw(ids, label="id")

    @rule(data=st.data(), parts=SETTLE_PARTS, user=st.none() | st.integers(0, 1))
    def settle(self, data: st.DataObject, parts: int | None, user: int | None) -> None:
        self.act(self.act_op(("settle", self.some_id(data), parts), user))

    @rule(data=st.data(), user=st.none() | st.integers(0, 1))
    def void(self, data: st.DataObject, user: int | None) -> None:
        self.act(self.act_op(("void", self.some_id(data), None), user))

    @rule(data=st.data(), report=DLRS)
    def dlr(self, data: st.DataObject, report: tuple[str, str]) -> None:
        msg_id = self.some_id(data)
        want = self.expect_act(self.act_op(("dlr", msg_id, report)))
        result = self.charger.dlr(msg_id, report[1], source=report[0])
        self.check_act(result, want, MessageOp("dlr", msg_id, source=report[0],
                                               status=report[1]))

    @rule(data=st.data())
    def refund_by_the_charger(self, data: st.DataObject) -> None:
        msg_id = self.some_id(data)
        want = self.expect_act(MessageOp("refund", msg_id))
        self.check_act(self.charger.refund(msg_id), want, MessageOp("refund", msg_id))

    @rule(later=st.sampled_from([timedelta(0), timedelta(minutes=11), timedelta(hours=7),
                                 timedelta(hours=25), timedelta(hours=49)]),
          before=st.none() | st.sampled_from([timedelta(0), timedelta(hours=1)]))
    def expire(self, later: timedelta, before: timedelta | None) -> None:
        """``holds expire`` after the clock moved on: every hold due (with ``before``: and
        every hold made that long ago or earlier) is settled at the held amount or voided."""
        self.move_clock(later)
        cutoff = None if before is None else self.now - before
        due = [i for i, m in self.messages.items() if m.status == "held" and (
            (m.expires_at is not None and m.expires_at <= self.now)
            or (cutoff is not None and m.charge is not None and m.charge.at <= cutoff))]
        results = self.charger.expire(
            before=None if cutoff is None else (cutoff - EPOCH) // timedelta(microseconds=1))
        assert sorted(r.id or "" for r in results) == sorted(due), results
        for r in results:  # in the order they were ended: a threshold plan may fire
            msg = self.messages[r.id or ""]
            settle = self.rules.expiry == holds.SETTLE
            want = self.end_hold(msg, "settled" if settle else "voided",
                                 msg.held or 0 if settle else 0, msg.parts, expired=True)
            self.check_act(r, want, MessageOp("expire", r.id or ""))
        event(f"expire{'' if before is None else ' --before'}: "
              f"{min(len(results), 3)}{'+' * (len(results) >= 3)} holds")

    @rule(items=st.lists(BATCH_ITEMS, min_size=2, max_size=5),
          users=st.lists(st.none() | st.integers(0, 1), min_size=5, max_size=5))
    def mixed_batch(self, items: list[tuple[str, Any, Any]], users: list[int | None]) -> None:
        """Charges, holds and acts on messages in one batch: each sees the ones before it."""
        ops: list[ChargeRequest | MessageOp] = []
        for (kind, *rest), user in zip(items, users, strict=False):
            if kind == "charge":
                ops.append(self.request(rest[0]))
            elif kind == "hold":
                ops.append(self.hold_request(rest[0]))
            else:
                ops.append(self.act_op((kind, rest[0], rest[1]), user))
        results = self.charger.charge_batch(ops)
        assert len(results) == len(ops)
        for op, result in zip(ops, results, strict=True):
            if isinstance(op, ChargeRequest):
                self.check_result(result, self.expect_request(op), op)
            else:
                self.check_act(result, self.expect_act(op), op)

    # -- refill plans ----------------------------------------------------------------------

    def user_plans(self, user: str, *, threshold: bool) -> list[MPlan]:
        return [p for _, p in sorted(self.plans.items())
                if p.user == user and (p.below is not None) == threshold]

    def rearm(self, user: str) -> None:
        """After the balance rose: threshold plans at or under it may fire again."""
        balance = self.users[user].balance
        for plan in self.user_plans(user, threshold=True):
            if not plan.armed and (plan.below or 0) <= balance:
                plan.armed = True

    def apply(self, plan: MPlan, period: int | date) -> Applied:
        """One period: added, or skipped when the refill (or the balance after it) would
        leave the range; either way that period (or crossing) is done."""
        u = self.users[plan.user]
        amount = plan.add if plan.add is not None else max((plan.top or 0) - u.balance, 0)
        skipped = OUT if out_of_range(amount, u.balance + amount) else None
        if skipped is None:
            u.balance += amount
        else:
            event(f"refill skipped: {OUT}")
        if isinstance(period, date):
            plan.last_day, label = period, period.isoformat()
        else:
            plan.crossings, plan.armed, label = period, False, f"crossing {period}"
        self.rearm(plan.user)
        return (plan.id, label, dec(amount), dec(u.balance), amount > 0 and skipped is None,
                skipped)

    def still_due(self, plan: MPlan, period: int | date) -> bool:
        """Whether the plan, as it is now, still wants this period (a run checks each period
        against the plan's current state)."""
        if plan.status != "active":
            return False
        if isinstance(period, date):
            return occurrence(period, plan.minute, self.users[plan.user].tz) > plan.start_after
        return plan.armed and self.users[plan.user].balance < (plan.below or 0)

    def due_days(self, plan: MPlan) -> list[date]:
        tz = self.users[plan.user].tz
        after = plan.start_after
        if plan.last_day is not None:
            after = max(after, occurrence(plan.last_day, plan.minute, tz))
        day, last = local_date(after, tz) - timedelta(days=1), local_date(self.now, tz)
        due = []
        while day <= last + timedelta(days=1):
            if after < occurrence(day, plan.minute, tz) <= self.now:
                due.append(day)
            day += timedelta(days=1)
        return due[-1:] if plan.top is not None else due

    def expect_run(self, interrupt: tuple[int, Any] | None = None) -> list[Applied]:
        """A run: the plans active when it starts, each with the periods due then; with
        ``interrupt`` (k, change), ``change()`` runs after the k-th period, and each later
        period is applied only if its plan still wants it (else that plan stops)."""
        out: list[Applied] = []
        at_start = copy.deepcopy(self.plans)
        for plan_id, seen in sorted(at_start.items()):
            if seen.status != "active":
                continue
            plan = self.plans[plan_id]
            if seen.below is not None:
                due: list[int | date] = []
                if seen.armed and self.users[plan.user].balance < (seen.below or 0):
                    due = [seen.crossings + 1]
            else:
                due = list(self.due_days(seen))
            for period in due:
                if not self.still_due(plan, period):
                    event("refill run: a plan changed during the run stops")
                    break
                out.append(self.apply(plan, period))
                if interrupt is not None and len(out) == interrupt[0]:
                    interrupt[1]()
        return out

    @precondition(lambda self: len(self.plans) < 4)
    @rule(who=st.integers(0, 1), at=st.sampled_from(AT_TIMES), add=st.booleans(),
          amount=REFILLS)
    def schedule_daily(self, who: int, at: str | None, add: bool, amount: int) -> None:
        name = self.pick(who)
        action = {"add": amount} if add else {"top_up_to": amount}
        if out_of_range(amount):
            refused_out_of_range(refills.schedule_plan, self.db, name, every="day", **action)
            return
        plan = refills.schedule_plan(self.db, name, every="day", at=at, **action)
        assert plan.id not in self.plans and plan.status == "active"
        minute = 0 if at is None else int(at[:2]) * 60 + int(at[3:])
        self.plans[plan.id] = MPlan(plan.id, name, self.now, amount if add else None,
                                    None if add else amount, minute=minute)

    @precondition(lambda self: len(self.plans) < 4)
    @rule(who=st.integers(0, 1), below=THRESHOLDS, add=st.booleans(), amount=REFILLS)
    def schedule_threshold(self, who: int, below: int, add: bool, amount: int) -> None:
        name = self.pick(who)
        if any(p.status != "cancelled" for p in self.user_plans(name, threshold=True)):
            return  # one live threshold plan per user
        top = None if add else below + amount
        if out_of_range(below, amount if add else below + amount):
            refused_out_of_range(refills.schedule_plan, self.db, name, below=below,
                                 add=amount if add else None, top_up_to=top)
            return
        plan = refills.schedule_plan(self.db, name, below=below,
                                     add=amount if add else None, top_up_to=top)
        self.plans[plan.id] = MPlan(plan.id, name, self.now, amount if add else None, top,
                                    below=below)
        assert plan.armed is True

    def model_status(self, plan: MPlan, status: str) -> bool:
        """A pause, resume or cancel, in the model; False: refused (the plan is cancelled)."""
        if plan.status == "cancelled":
            return False
        if status == "active" and plan.status == "paused":
            plan.start_after = self.now  # paused periods are skipped, not caught up
        plan.status = status
        return True

    def real_status(self, plan_id: int, status: str, accepted: bool) -> None:
        if not accepted:
            with pytest.raises(Conflict):
                refills.set_status(self.db, plan_id, status)
            return
        assert refills.set_status(self.db, plan_id, status).status == status

    @precondition(lambda self: bool(self.plans))
    @rule(data=st.data(), status=st.sampled_from(["active", "paused", "cancelled"]))
    def set_plan_status(self, data: st.DataObject, status: str) -> None:
        plan = self.plans[data.draw(st.sampled_from(sorted(self.plans)), label="plan")]
        self.real_status(plan.id, status, self.model_status(plan, status))

    @rule(dry_run=st.booleans())
    def refill_run(self, dry_run: bool) -> None:
        """What cron calls; a dry run shows what a run would do and changes nothing."""
        saved = copy.deepcopy((self.users, self.plans))
        want = [(*a[:4], a[4] and not dry_run, a[5]) for a in self.expect_run()]
        if dry_run:
            self.users, self.plans = saved
        got = [(a.plan_id, a.period, a.amount, a.balance, a.applied, a.skipped)
               for a in refills.run(self.db, dry_run=dry_run)]
        assert got == want
        n = min(len(got), 3)
        event(f"refill {'dry run' if dry_run else 'run'}: {n}{'+' * (n == 3)} applications")

    @precondition(lambda self: bool(self.plans))
    @rule(data=st.data(), k=st.integers(1, 4),
          status=st.sampled_from(["active", "paused", "cancelled"]),
          days=st.integers(0, 12))
    def refill_run_interrupted(self, data: st.DataObject, k: int, status: str,
                               days: int) -> None:
        """A catch-up run (the clock moved ``days`` on) during which another connection
        pauses, resumes or cancels a plan, right after the run's k-th period committed:
        nothing of a cancelled or paused plan is applied after that, and a resumed one skips
        what came due while paused (here: everything up to now)."""
        self.move_clock(timedelta(days=days))
        plan_id = data.draw(st.sampled_from(sorted(self.plans)), label="plan")
        accepted: list[bool] = []
        want = self.expect_run(interrupt=(k, lambda: accepted.append(
            self.model_status(self.plans[plan_id], status))))
        real, calls = refills._run_one, []

        def hooked(*args: Any, **kwargs: Any) -> Any:
            done = real(*args, **kwargs)
            calls.append(done)
            if len(calls) == k:  # committed: change the plan as another connection would
                assert accepted, f"the model expected fewer than {k} periods"
                self.real_status(plan_id, status, accepted[0])
            return done

        refills._run_one = hooked
        try:
            got = [(a.plan_id, a.period, a.amount, a.balance, a.applied, a.skipped)
                   for a in refills.run(self.db)]
        finally:
            refills._run_one = real
        assert got == want
        assert bool(accepted) == (len(calls) >= k)
        event(f"refill run interrupted: {'after' if accepted else 'before'} the change")

    @rule(who=st.integers(0, 1), margin=st.integers(0, 30_000))
    def refill_near_the_maximum(self, who: int, margin: int) -> None:
        """A run with a balance just under the maximum: a refill that would pass it is
        skipped (``amount_out_of_range``, journaled, no amount), the others apply; then the
        balance is set back, so that the other rules stay within the range here (the
        ``HugeAmountsModel`` keeps such balances)."""
        name = self.pick(who)
        before = self.users[name].balance
        # Each step's difference stays within the range too (the journal's amounts).
        self.set_credits(who, min(MAX_MILLIS - margin, MAX_MILLIS + before))
        self.refill_run(False)
        self.set_credits(who, max(before, 0))
        self.set_credits(who, before)

    @rule(first=REQUESTS, second=REQUESTS, slack=st.sampled_from([0, 1, 250, 1000, 2500]),
          unlimited=st.booleans())
    def overdraft_between_charges(self, first: tuple[int, str, int, str | None],
                                  second: tuple[int, str, int, str | None], slack: int,
                                  unlimited: bool) -> None:
        """`power overdraft` between two charges of the same user on the same Charger: the
        second sees the new overdraft, set just around what the balance allows."""
        who = first[0] % 2
        self.charge(first)
        floor = max(-self.users[self.pick(who)].balance, 0)
        self.set_overdraft(who, None if unlimited else max(floor + slack - 1000, 0))
        self.charge((who, *second[1:]))

    # -- checks after every step -----------------------------------------------------------

    def spent(self, user: str) -> dict[str, int]:
        tz = self.users[user].tz
        today = local_date(self.now, tz)
        totals = dict.fromkeys(WINDOWS, 0)
        for c in self.charges:
            if c.user == user and not c.refunded:
                day = local_date(c.at, tz)
                for window in WINDOWS:
                    if same_window(window, day, today):
                        totals[window] += c.cost
        return totals

    def check_limits(self, name: str, shown: reads.Limits) -> None:
        u = self.users[name]
        spent, today = self.spent(name), local_date(self.now, u.tz)
        assert shown.tz == u.tz
        for w in shown.windows:
            limit = u.limits[w.window]
            assert (w.spent, w.limit) == (
                dec(spent[w.window]), None if limit is None else dec(limit)), (name, w)
            if limit is not None:
                assert w.remaining == dec(max(limit - spent[w.window], 0)), (name, w)
            assert w.resets_at == window_end(w.window, today, u.tz), (name, w)

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not self.users:
            return
        for name, u in self.users.items():
            account = ledger.get_account(self.db, name)
            assert (account.balance, account.held) == (dec(u.balance), dec(u.held)), name
            assert account.overdraft == (None if u.overdraft is None else dec(u.overdraft))
            assert account.available == (
                None if u.overdraft is None else dec(u.balance - u.held + u.overdraft)), name
            assert u.overdraft is None or account.available >= 0, name
            self.check_limits(name, reads.show_limits(self.db, name))
            log = reads.query_events(self.db, name, credit_only=True, limit=100_000)
            # The log shows holds, voids and expiries too: they change what is available,
            # not the balance (no amount).
            assert sum(e.amount for e in log if e.amount is not None) == account.balance, name
            assert log[0].balance_after == account.balance, name
        for plan in reads.list_plans(self.db, all_=True):
            mine = self.plans[plan.id]
            assert (plan.user, plan.status) == (mine.user, mine.status), plan
            if mine.below is not None:
                assert plan.armed is mine.armed, (plan, mine)
            elif mine.status != "active":
                assert plan.next_due_at is None, (plan, mine)
            else:
                tz = self.users[mine.user].tz
                day = local_date(self.now, tz) - timedelta(days=1)
                while (nxt := occurrence(day, mine.minute, tz)) <= self.now:
                    day += timedelta(days=1)
                assert plan.next_due_at == nxt.astimezone(UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"), (plan, mine)
        report = verify.verify(self.db)
        assert report.ok, report.problems


# -- engines -------------------------------------------------------------------------------


class SqliteModel(ModelMachine):
    def open_database(self) -> Db:
        # On a RAM disk where there is one: the machine commits thousands of times.
        ram = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._tmp = tempfile.TemporaryDirectory(prefix="smscredits-model-", dir=ram)
        return open_db(str(Path(self._tmp.name) / "credits.db"), actor="tester")

    def close_database(self) -> None:
        self._tmp.cleanup()


class PostgresModel(ModelMachine):
    def open_database(self) -> Db:
        base = os.environ[PG_ENV]
        self._schema = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(_pg_conninfo(base), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self._schema}"')
        sep = "&" if "?" in base else "?"
        handle = open_db(f"{base}{sep}options=-csearch_path%3D{self._schema}",
                         check=False, actor="tester")
        upgrade(handle)
        return handle

    def close_database(self) -> None:
        with psycopg.connect(_pg_conninfo(os.environ[PG_ENV]), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{self._schema}" CASCADE')


class HugeAmountsModel(ModelMachine):
    """The machine with amounts at the edge of the documented range and past it: prices,
    credits added and set, overdrafts, refill plans and the balances they lead to. An amount
    that would leave the range (a price times parts, a balance after a charge, a refund or a
    credit, a window counter, a journaled difference) is refused with reason
    ``amount_out_of_range`` and nothing is written; a refill that would is skipped. Never an
    exception. (Charges, credits, refunds and overdrafts get these checks with the overflow
    work of their own; refills with theirs.)"""

    @rule(key=st.sampled_from(PRICE_KEYS), price=NEAR_MAX)
    def set_huge_price(self, key: str, price: int) -> None:
        self.set_price(key, price)

    @rule(who=st.integers(0, 1), amount=SIGNED_HUGE)
    def add_huge_credits(self, who: int, amount: int) -> None:
        self.add_credits(who, amount)

    @rule(who=st.integers(0, 1), balance=SIGNED_HUGE)
    def set_huge_credits(self, who: int, balance: int) -> None:
        self.set_credits(who, balance)

    @rule(who=st.integers(0, 1), overdraft=HUGE)
    def set_huge_overdraft(self, who: int, overdraft: int) -> None:
        self.set_overdraft(who, overdraft)

    @precondition(lambda self: len(self.plans) < 4)
    @rule(who=st.integers(0, 1), at=st.sampled_from(AT_TIMES), add=st.booleans(), amount=HUGE)
    def schedule_huge_daily(self, who: int, at: str | None, add: bool, amount: int) -> None:
        self.schedule_daily(who, at, add, amount)

    @precondition(lambda self: len(self.plans) < 4)
    @rule(who=st.integers(0, 1), below=NEAR_MAX | THRESHOLDS, add=st.booleans(),
          amount=HUGE | REFILLS)
    def schedule_huge_threshold(self, who: int, below: int, add: bool, amount: int) -> None:
        self.schedule_threshold(who, below, add, amount)


class HugeAmountsSqlite(SqliteModel, HugeAmountsModel):
    pass


class HugeAmountsPostgres(PostgresModel, HugeAmountsModel):
    pass


COMMON = {
    "stateful_step_count": 30,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}


class TestModelSqlite(SqliteModel.TestCase):  # type: ignore[name-defined,misc]
    settings = settings(max_examples=200, **COMMON)


@pytest.mark.skipif(not os.environ.get(PG_ENV), reason=PG_SKIP)
class TestModelPostgres(PostgresModel.TestCase):  # type: ignore[name-defined,misc]
    """Unset SMSCREDITS_TEST_PG skips; set, an unreachable server is an error."""

    settings = settings(max_examples=40, **COMMON)


# Huge amounts: green once the overflow checks of charges, credits, refunds and overdrafts
# are in (refills have theirs); kept apart so that the machine above stays green meanwhile.
class TestHugeAmountsModelSqlite(HugeAmountsSqlite.TestCase):  # type: ignore[name-defined,misc]
    settings = settings(max_examples=100, **COMMON)


@pytest.mark.skipif(not os.environ.get(PG_ENV), reason=PG_SKIP)
class TestHugeAmountsModelPostgres(HugeAmountsPostgres.TestCase):  # type: ignore[name-defined,misc]
    settings = settings(max_examples=25, **COMMON)


# -- regressions found by the machine ------------------------------------------------------


def test_verify_is_clean_for_an_account_that_was_never_charged(db: Db) -> None:
    """Its window keys are still 0: verify must not crash on them (was: ValueError)."""
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    ledger.create_power(db, "alice", initial=5_000)
    report = verify.verify(db)
    assert report.ok, report.problems


def test_number_and_price_are_refused_before_an_unknown_user(db: Db) -> None:
    """The README's order: number (invalid_number), price (no_price), then the user."""
    pricing.set_price(db, "HU", "1")
    charger = Charger(db)
    assert charger.charge(ChargeRequest(GHOST, BAD, parts=1)).reason == "invalid_number"
    assert charger.charge(ChargeRequest(GHOST, GB, parts=1)).reason == "no_price"


def test_a_replayed_refusal_repeats_the_first_result(db: Db) -> None:
    """A refused message of an unknown user, sent again with its id: the replay must say what
    the first answer said (was: cost 1.5 first, 0 on the replay)."""
    pricing.set_price(db, "+1212", "1.5")
    charger = Charger(db)
    first = charger.charge(ChargeRequest(GHOST, US, parts=1, id="m1"))
    again = charger.charge(ChargeRequest(GHOST, US, parts=1, id="m1"))
    assert (first.status, first.reason, first.cost) == ("rejected", "unknown_user", Decimal("1.5"))
    assert again.replayed
    assert replay_fields(again) == replay_fields(first)


def test_a_replayed_charge_that_fired_a_threshold_plan_repeats_the_first_result(db: Db) -> None:
    """The first answer shows the balance after the refill the charge fired; so must the
    replay (was: the balance before the refill)."""
    pricing.set_price(db, "HU", "1")
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    ledger.create_power(db, "alice", initial=1_000)
    refills.schedule_plan(db, "alice", below=1_000, top_up_to=11_000)
    charger = Charger(db)
    first = charger.charge(ChargeRequest("alice", HU, parts=1, id="m1"))
    assert (first.status, first.balance) == ("charged", Decimal(11))
    again = charger.charge(ChargeRequest("alice", HU, parts=1, id="m1"))
    assert again.replayed and ledger.get_account(db, "alice").balance == 11
    assert replay_fields(again) == replay_fields(first)


def test_a_charge_refused_beside_a_hold_names_what_is_held(db: Db) -> None:
    """A charge refused for the balance while credits are held: the refusal's numbers name
    the held amount (was: a TypeError making the refusal's message, and the batch lost)."""
    pricing.set_price(db, "HU", "1")
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    ledger.create_power(db, "alice", initial=1_000, overdraft=0)
    db.hold_rules = holds.Rules()
    charger = Charger(db)
    assert charger.hold(ChargeRequest("alice", HU, parts=1, id="m1")).status == "held"
    refused = charger.charge(ChargeRequest("alice", HU, parts=1))
    assert (refused.status, refused.reason) == ("rejected", "insufficient_credits")
    assert refused.refusal == {"cost": Decimal(1), "available": Decimal(0),
                               "balance": Decimal(1), "overdraft": Decimal(0),
                               "held": Decimal(1)}


def test_a_replayed_settle_that_fired_a_threshold_plan_repeats_the_first_result(db: Db) -> None:
    """The settle's answer shows the balance after the refill it fired; so must a settle,
    a delivery report or a charge sent again with its id (was: the balance before the
    refill, as for charges before)."""
    pricing.set_price(db, "HU", "1")
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    ledger.create_power(db, "alice", initial=1_000)
    refills.schedule_plan(db, "alice", below=1_000, top_up_to=11_000)
    db.hold_rules = holds.Rules()
    charger = Charger(db)
    assert charger.hold(ChargeRequest("alice", HU, parts=1, id="m1")).status == "held"
    first = charger.settle("m1")
    assert (first.status, first.balance) == ("settled", Decimal(11))
    for again in (charger.settle("m1"), charger.dlr("m1", "DELIVRD"),
                  charger.charge(ChargeRequest("alice", HU, parts=1, id="m1"))):
        assert again.replayed, again
        assert (again.status, again.cost, again.balance) == ("settled", Decimal(1),
                                                             Decimal(11)), again
    assert ledger.get_account(db, "alice").balance == 11


def test_a_settle_for_more_parts_is_not_refused_by_a_window_it_is_not_counted_in(
        db: Db) -> None:
    """A hold of yesterday settled today for more parts: the difference is counted in the
    hold's windows still current (its week and month), so only their limits may refuse it.
    (Was: refused, settled at the held amount, by the day's limit: the hold's ended day when
    nothing was charged since midnight, today's when something was.)"""
    with freeze_time(datetime(2026, 1, 6, 12, 0, tzinfo=UTC)) as frozen:
        pricing.set_price(db, "HU", "1")
        ledger.add_user(db, "alice", tz="Europe/Budapest")
        ledger.create_power(db, "alice", initial=10_000)
        ledger.set_limits(db, "alice", {"day": 2_000})
        db.hold_rules = holds.Rules()
        charger = Charger(db)
        for msg_id in ("m1", "m2"):
            assert charger.hold(ChargeRequest("alice", HU, parts=1, id=msg_id)).held == 1
        frozen.tick(timedelta(days=1))
        first = charger.settle("m1", parts=2)  # yesterday's day limit does not count it
        assert (first.status, first.reason, first.cost) == ("settled", None, Decimal(2))
        assert charger.charge(ChargeRequest("alice", HU, parts=1)).status == "charged"
        ledger.set_limits(db, "alice", {"day": 0})
        second = charger.settle("m2", parts=2)  # nor does today's, passed by a charge
        assert (second.status, second.reason, second.cost) == ("settled", None, Decimal(2))
        assert ledger.get_account(db, "alice").balance == 5
        assert [w.spent for w in reads.show_limits(db, "alice").windows] == [1, 5, 5]
        report = verify.verify(db)
        assert report.ok, report.problems


def test_a_hold_with_the_id_of_a_refunded_charge_at_another_cost_is_a_conflict(db: Db) -> None:
    """The same id with another cost is a conflict; that a hold which ended replays whatever
    it costs now does not make a refunded charge one (was: replayed as charged)."""
    pricing.set_price(db, "HU", "1")
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    ledger.create_power(db, "alice", initial=5_000)
    db.hold_rules = holds.Rules()
    charger = Charger(db)
    assert charger.charge(ChargeRequest("alice", HU, parts=1, id="m1")).status == "charged"
    assert charger.refund("m1").status == "refunded"
    again = charger.hold(ChargeRequest("alice", HU, parts=2, id="m1"))
    assert (again.status, again.reason) == ("error", "conflict"), again
    assert ledger.get_account(db, "alice").held == 0
