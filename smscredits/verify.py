"""Check every state that decides money against the journal, in one snapshot.

The journal is the source of truth. In one pass over it, in id order, each account's chain is
followed (each event's hash must cover its content and the previous event's hash; the last
must be the account's ``last_hash``) and its states are replayed: the balance (the sum of its
amounts), the current day/week/month counters (its ``message.charged`` costs in those windows
less their refunds), its overdraft (``power.created``, ``power.overdraft``) and limits (from
none, each ``limits.set`` changing the windows it names); and, from the events without an
account, each user's disabled flag and zone (``user.added``, ``user.disabled``,
``user.enabled``) and each refill plan's status (``refill.*``; a ``power.deleted`` cancels the
user's plans, as deleting a power does). Each is compared with its row. Events without an
account never carry an amount. Messages are matched with their events by one grouped query
(memory stays flat however big the journal): a charged message has exactly one charge event
(or one ``message.unmetered``), a refunded one also exactly one refund, a rejected one none,
and every message event has its message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    String,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    union_all,
)

from smscredits import clock, limits
from smscredits.amounts import parse_amount, parse_optional, to_decimal
from smscredits.errors import BadInput
from smscredits.journal import HASHED_COLUMNS, hash_of
from smscredits.limits import LIMIT_COLUMN, WINDOWS, Keys, Spent
from smscredits.reads import ACTIVE, CANCELLED, PAUSED
from smscredits.storage.engine import Db
from smscredits.storage.tables import events, messages, powers, refill_plans, users


@dataclass(frozen=True, slots=True)
class Problem:
    # balance | window | chain | overdraft | limit | user | plan | message | event
    check: str
    user: str
    detail: str
    expected: Any = None
    found: Any = None
    event_id: int | None = None


@dataclass(frozen=True, slots=True)
class Report:
    accounts: int
    events: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(db: Db) -> Report:
    with db.read() as conn:  # one snapshot: see Db.read
        accounts = conn.execute(
            select(powers, users.c.name, users.c.tz).join(users, users.c.id == powers.c.user_id)
            .order_by(powers.c.id)
        ).mappings().all()
        people = conn.execute(
            select(users.c.id, users.c.name, users.c.tz, users.c.disabled).order_by(users.c.id)
        ).all()
        plans = conn.execute(
            select(refill_plans.c.id, refill_plans.c.user_id, refill_plans.c.status)
            .order_by(refill_plans.c.id)
        ).all()
        replay = _Replay(accounts, db.default_tz, {p.id: p.name for p in people})
        replay.read(conn)
        problems = replay.account_problems()
        problems += replay.user_problems(people)
        problems += replay.plan_problems(plans)
        problems += replay.stray
        problems += _message_problems(conn, replay.names)
    return Report(len(accounts), replay.events, problems)


# -- accounts ----------------------------------------------------------------------------------

_UNKNOWN: Any = object()  # a state the journal never set


class _Account:
    """One account's chain and states, replayed event by event."""

    __slots__ = ("balance", "broken", "charged", "held", "keys", "last_at", "last_id", "last_kind",
                 "limits", "overdraft", "owner", "prev", "refunded", "since", "spent", "tz")

    def __init__(self, row: Any, default_tz: str) -> None:
        self.prev: str | None = None
        self.last_id: int | None = None
        self.broken: int | None = None  # the first event whose hash does not follow
        self.last_kind: str | None = None
        self.last_at = 0  # the latest instant of its events
        self.balance = 0
        self.held = 0  # what its open holds reserve
        self.owner: int | None = None  # the user of its power.created
        self.overdraft: Any = _UNKNOWN
        self.limits: list[int | None] = [None, None, None]
        self.tz = (row["tz"] if row is not None else None) or default_tz
        # The windows stored on the row, and the instant from which charges can fall in them
        # (None: never charged, nothing to count).
        self.keys: Keys = ((row["day_key"], row["week_key"], row["month_key"])
                           if row is not None else (0, 0, 0))
        self.since = _since(self.keys, self.tz) if self.keys[2] else None
        self.spent: Spent = (0, 0, 0)
        # The refs refunded since ``since`` (read before the pass), and the windows of their
        # charges: only those need remembering, not every charge of the month.
        self.refunded: set[str] = set()
        self.charged: dict[str, tuple[int, int, int]] = {}

    def follow(self, event_id: int, hash_: str | None, fields: tuple[Any, ...]) -> None:
        if self.broken is not None:
            return
        if hash_ != hash_of(self.prev, fields):
            self.broken = event_id
        else:
            self.prev, self.last_id = hash_, event_id
            if fields[0] > self.last_at:
                self.last_at = fields[0]

    def charge(self, ref: str, at: int, amount: int) -> None:
        keys = limits.keys_at(at, self.tz)
        if ref in self.refunded:
            self.charged[ref] = keys
        # Counted in the windows held on the row; a charge before them is history.
        self.spent = limits.moved(self.keys, self.spent, keys, abs(amount))

    def refund(self, ref: str, amount: int) -> None:
        keys = self.charged.get(ref)  # None: charged before these windows
        if keys is not None:
            self.spent = limits.moved(self.keys, self.spent, keys, -abs(amount))

    def hold(self, ref: str, at: int, detail: str | None) -> None:
        held = parse_amount(json.loads(detail or "{}")["held"])
        self.held += held
        if self.since is not None and at >= self.since:
            self.charge(ref, at, held)  # a hold counts in the windows as a charge does

    def release(self, ref: str, amount: int | None, detail: str | None) -> None:
        """A hold settled (``amount`` taken), voided or expired: what it held is no longer
        held, and its windows move by the difference while they are current."""
        held = parse_amount(json.loads(detail or "{}")["held"])
        self.held -= held
        keys = self.charged.get(ref)
        if keys is not None:
            self.spent = limits.moved(self.keys, self.spent, keys, -(amount or 0) - held)

    def state(self, kind: str, user_id: int | None, detail: str | None) -> None:
        """A change of overdraft or limits, as its event's detail says."""
        values = json.loads(detail) if detail else {}
        if kind == "power.created":
            self.owner, self.limits = user_id, [None, None, None]
            self.overdraft = parse_optional(values["overdraft"], what="overdraft")
        elif kind == "power.overdraft":
            self.overdraft = parse_optional(values["overdraft"], what="overdraft")
        else:  # limits.set: the windows it names, the others as they were
            for i, window in enumerate(WINDOWS):
                if window in values:
                    self.limits[i] = parse_optional(values[window], what="limit")


def _since(keys: Keys, tz: str) -> int:
    # The week can start in the month before.
    return min(limits.starts_at("month", keys[2], tz), limits.starts_at("week", keys[1], tz))


def _shown(millis: int | None) -> Any:
    return "unlimited" if millis is None else to_decimal(millis)


def _account_problems(row: Any, acc: _Account) -> list[Problem]:
    name = row["name"]
    found: list[Problem] = []
    if acc.balance != row["balance"]:
        found.append(Problem("balance", name, "balance differs from the sum of its journal",
                             to_decimal(acc.balance), to_decimal(row["balance"])))
    if acc.held != row["held"]:
        found.append(Problem("held", name, "held differs from the open holds of its journal",
                             to_decimal(acc.held), to_decimal(row["held"])))
    for i, window in enumerate(WINDOWS):
        if acc.spent[i] != row[f"{window}_spent"]:
            detail = (f"{window} counter differs from its journal" if acc.since is not None
                      else f"{window} counter set on an account never charged")
            found.append(Problem("window", name, detail, to_decimal(acc.spent[i]),
                                 to_decimal(row[f"{window}_spent"])))
    if acc.broken is not None:
        found.append(Problem("chain", name, "event altered, removed or reordered",
                             event_id=acc.broken))
    elif acc.prev != row["last_hash"]:
        found.append(Problem("chain", name, "latest events missing from the journal",
                             event_id=acc.last_id))
    elif acc.last_at != row["last_at"]:  # the instant no later event may be stamped before
        found.append(Problem("time", name, "latest event time differs from its journal",
                             clock.iso(acc.last_at), clock.iso(row["last_at"])))
    if acc.overdraft is _UNKNOWN:
        found.append(Problem("overdraft", name, "account has no power.created event",
                             None, _shown(row["overdraft"])))
        return found
    if acc.owner != row["user_id"]:
        found.append(Problem("chain", name, "account created for another user",
                             acc.owner, row["user_id"]))
    if acc.overdraft != row["overdraft"]:
        found.append(Problem("overdraft", name, "overdraft differs from its journal",
                             _shown(acc.overdraft), _shown(row["overdraft"])))
    for i, window in enumerate(WINDOWS):
        if acc.limits[i] != row[LIMIT_COLUMN[window]]:
            found.append(Problem("limit", name, f"{window} limit differs from its journal",
                                 _shown(acc.limits[i]), _shown(row[LIMIT_COLUMN[window]])))
    return found


def _deleted_problems(name: str, acc: _Account) -> list[Problem]:
    """A deleted account's chain: intact, ended by its ``power.deleted``, summing to 0."""
    if acc.broken is not None:
        return [Problem("chain", name, "event of a deleted account altered, removed or "
                        "reordered", event_id=acc.broken)]
    if acc.last_kind != "power.deleted" or acc.balance != 0:
        return [Problem("chain", name, "events of an account that does not exist",
                        "power.deleted", acc.last_kind, event_id=acc.last_id)]
    return []


# -- the pass ----------------------------------------------------------------------------------

_STATE_KINDS = frozenset({"power.created", "power.overdraft", "limits.set"})
_RELEASES = frozenset({"message.settled", "message.voided", "message.expired"})
_USER_KINDS = frozenset({"user.added", "user.disabled", "user.enabled", "user.tz_changed",
                         "user.renamed", "user.deleted"})
_PLAN_STATUS = {"refill.scheduled": ACTIVE, "refill.resumed": ACTIVE, "refill.paused": PAUSED,
                "refill.cancelled": CANCELLED}


class _Replay:
    """Every chain and every state the journal decides, from one pass over it in id order
    (one index seek per account would cost more than reading each event once)."""

    def __init__(self, accounts: Any, default_tz: str, names: dict[int, str]) -> None:
        self.rows = {row["id"]: row for row in accounts}
        self.default_tz = default_tz
        self.names = names
        self.accounts = {pid: _Account(row, default_tz) for pid, row in self.rows.items()}
        self.deleted: dict[int, tuple[int | None, _Account]] = {}  # no row: user, account
        self.users: dict[int, list[Any]] = {}  # user id: [disabled, tz, name, deleted]
        self.plans: dict[int, tuple[int | None, str, int]] = {}  # id: user, status, event
        self.plans_of: dict[int | None, list[int]] = {}
        self.deleted_users: set[int] = set()
        self.stray: list[Problem] = []  # events that cannot be as they are
        self.events = 0

    def read(self, conn: Connection) -> None:
        self.read_refunds(conn)
        hashed = [events.c[c] for c in HASHED_COLUMNS]
        result = conn.execution_options(yield_per=5000).execute(
            select(events.c.id, events.c.hash, *hashed).order_by(events.c.id)
        )
        accounts = self.accounts
        for rows in result.partitions():
            self.events += len(rows)
            for row in rows:
                (event_id, hash_, at, user_id, power_id, kind, amount, after, ref, *_,
                 detail) = row
                if power_id is None:
                    self.guarded(self.unchained, event_id, user_id, event_id, user_id, kind,
                                 amount, after, ref, detail)
                    continue
                acc = accounts.get(power_id) or self.deleted_account(power_id, user_id)
                acc.follow(event_id, hash_, row[2:])
                acc.last_kind = kind
                if amount is not None:
                    acc.balance += amount
                if kind == "message.charged":
                    if acc.since is not None and at >= acc.since:
                        acc.charge(ref, at, amount)
                elif kind == "message.refunded":
                    acc.refund(ref, amount)
                elif kind == "message.held":
                    self.guarded(acc.hold, event_id, user_id, ref, at, detail)
                elif kind in _RELEASES:
                    self.guarded(acc.release, event_id, user_id, ref, amount, detail)
                elif kind in _STATE_KINDS:
                    self.guarded(acc.state, event_id, user_id, kind, user_id, detail)
                elif kind == "power.deleted":
                    self.cancel_plans(user_id, event_id)

    def guarded(self, replay: Any, event_id: int, user_id: int | None, *args: Any) -> None:
        """Replay one event; a detail that does not read as its kind's (an edited event,
        whose chain is then broken too) is a problem, not a crash."""
        try:
            replay(*args)
        except (ValueError, KeyError, TypeError, AttributeError, BadInput):
            self.stray.append(Problem("event", self.names.get(user_id or 0, ""),
                                      "event detail unreadable", event_id=event_id))

    def read_refunds(self, conn: Connection) -> None:
        """Which messages of each account were refunded or had their hold released within
        its windows (a scan the database does by itself, far cheaper than the pass): the
        windows of their charge or hold are remembered for those only."""
        result = conn.execution_options(yield_per=5000).execute(
            select(events.c.power_id, events.c.ref, events.c.at)
            .where(events.c.kind.in_(["message.refunded", *_RELEASES]))
        )
        for power_id, ref, at in result:
            acc = self.accounts.get(power_id)
            if acc is not None and acc.since is not None and at >= acc.since:
                acc.refunded.add(ref)

    def deleted_account(self, power_id: int, user_id: int | None) -> _Account:
        if power_id not in self.deleted:
            self.deleted[power_id] = (user_id, _Account(None, self.default_tz))
        return self.deleted[power_id][1]

    def unchained(self, event_id: int, user_id: int | None, kind: str, amount: int | None,
                  after: int | None, ref: str | None, detail: str | None) -> None:
        """An event without an account: a user's or a plan's, or a price's."""
        if amount is not None or after is not None:
            self.stray.append(Problem(
                "event", self.names.get(user_id, "") if user_id is not None else "",
                "event without an account carries an amount", None,
                to_decimal(amount if amount is not None else after or 0), event_id))
        if kind in _USER_KINDS:
            self.user_event(kind, user_id or 0, json.loads(detail) if detail else {})
        elif kind in _PLAN_STATUS and ref is not None and ref.startswith("plan:"):
            plan_id = int(ref[5:])
            if kind == "refill.scheduled":
                self.plans_of.setdefault(user_id, []).append(plan_id)
            self.plans[plan_id] = (user_id, _PLAN_STATUS[kind], event_id)

    def user_event(self, kind: str, user_id: int, values: dict[str, Any]) -> None:
        """A user's state (disabled, zone, name, deleted) as its events leave it."""
        if kind == "user.added":
            # Journals from before names were journaled give none: the name is then unknown.
            self.users[user_id] = [False, values.get("tz"), values.get("name"), False]
            if values.get("name"):
                self.names.setdefault(user_id, values["name"])
            return
        state = self.users.get(user_id)
        if state is None:
            return  # told by user_problems: no user.added
        if kind in ("user.disabled", "user.enabled"):
            state[0] = kind == "user.disabled"
        elif kind == "user.tz_changed":
            state[1] = values["tz"]
        elif kind == "user.renamed":
            state[2] = values["name"]
        else:  # user.deleted: its plans went with it
            state[3] = True
            self.deleted_users.add(user_id)

    def cancel_plans(self, user_id: int | None, event_id: int) -> None:
        """Deleting a power cancels its user's plans (journals from before it said so with a
        ``refill.cancelled`` each have only the ``power.deleted``)."""
        for plan_id in self.plans_of.get(user_id, ()):
            if self.plans[plan_id][1] != CANCELLED:
                self.plans[plan_id] = (user_id, CANCELLED, event_id)

    # -- comparisons ---------------------------------------------------------------------------

    def account_problems(self) -> list[Problem]:
        found: list[Problem] = []
        for power_id, row in self.rows.items():
            found += _account_problems(row, self.accounts[power_id])
        for user_id, acc in self.deleted.values():
            found += _deleted_problems(self.names.get(user_id or 0, ""), acc)
        return found

    def user_problems(self, people: Any) -> list[Problem]:
        found: list[Problem] = []
        for person in people:
            state = self.users.get(person.id)
            if state is None:
                found.append(Problem("user", person.name, "user has no user.added event"))
                continue
            if state[0] != bool(person.disabled):
                found.append(Problem("user", person.name,
                                     "disabled flag differs from its journal",
                                     state[0], bool(person.disabled)))
            if state[1] != person.tz:
                found.append(Problem("user", person.name, "time zone differs from its journal",
                                     state[1], person.tz))
            if state[2] is not None and state[2] != person.name:
                found.append(Problem("user", person.name, "name differs from its journal",
                                     state[2], person.name))
            if state[3]:
                found.append(Problem("user", person.name, "user deleted in the journal exists"))
        return found

    def plan_problems(self, plans: Any) -> list[Problem]:
        found: list[Problem] = []
        for plan in plans:
            name = self.names.get(plan.user_id, "")
            journaled = self.plans.pop(plan.id, None)
            if journaled is None:
                found.append(Problem("plan", name, f"plan {plan.id} has no refill.scheduled "
                                     "event", None, plan.status))
            elif journaled[1] != plan.status or journaled[0] != plan.user_id:
                found.append(Problem("plan", name, f"plan {plan.id} status differs from its "
                                     "journal", journaled[1], plan.status, journaled[2]))
        for plan_id, (user_id, status, event_id) in self.plans.items():
            if user_id in self.deleted_users and status == CANCELLED:
                continue  # removed with its user
            found.append(Problem("plan", self.names.get(user_id or 0, ""),
                                 f"journal names plan {plan_id}, which does not exist",
                                 status, None, event_id))
        return found


# -- messages ----------------------------------------------------------------------------------

# Each row of the grouped check is a message row (0) or one of its events.
_ROW, _CHARGE, _REFUND, _UNMETERED, _HELD, _SETTLED, _VOIDED, _EXPIRED = range(8)
_MESSAGE_KINDS = {"message.charged": _CHARGE, "message.refunded": _REFUND,
                  "message.unmetered": _UNMETERED, "message.held": _HELD,
                  "message.settled": _SETTLED, "message.voided": _VOIDED,
                  "message.expired": _EXPIRED}


def _message_problems(conn: Connection, names: dict[int, str]) -> list[Problem]:
    """Messages against their events: one statement grouping both by message id, which
    returns only the messages (or events) that disagree."""
    rows = conn.execute(_MESSAGE_CHECK).all()
    if not rows:
        return []
    named: dict[str, str] = {}
    for start in range(0, len(rows), 500):  # the names, for these rows only
        ids = [r.id for r in rows[start:start + 500]]
        named.update(conn.execute(select(messages.c.id, messages.c.user_name)
                                  .where(messages.c.id.in_(ids))).all())
    return [_message_problem(r, named.get(r.id) or names.get(r.user_id or 0, "")) for r in rows]


def _message_check() -> Any:
    """The statement behind ``_message_problems``: narrow rows (the sort is its cost), the
    kinds as small numbers, and every figure a problem is told with."""
    big, text_ = BigInteger(), String()
    from_events = select(
        events.c.ref.label("id"),
        case(*((events.c.kind == k, v) for k, v in _MESSAGE_KINDS.items())).label("k"),
        events.c.amount, events.c.power_id, events.c.user_id,
        cast(null(), text_).label("status"), events.c.id.label("event_id"),
    ).where(events.c.kind.in_(list(_MESSAGE_KINDS)))
    from_messages = select(
        messages.c.id, literal(_ROW), messages.c.cost, messages.c.power_id, messages.c.user_id,
        messages.c.status, cast(null(), big),
    )
    both = union_all(from_events, from_messages).subquery()

    def count(k: int) -> Any:
        return func.sum(case((both.c.k == k, 1), else_=0))

    def of(k: int, col: Any) -> Any:
        return func.max(case((both.c.k == k, col)))

    grouped = select(
        both.c.id, count(_ROW).label("rows"), func.max(both.c.status).label("status"),
        of(_ROW, both.c.amount).label("cost"), of(_ROW, both.c.power_id).label("power_id"),
        func.max(both.c.user_id).label("user_id"), count(_CHARGE).label("charges"),
        count(_REFUND).label("refunds"), count(_UNMETERED).label("unmetered"),
        of(_CHARGE, both.c.amount).label("charged"),
        of(_CHARGE, both.c.power_id).label("charged_power"),
        of(_REFUND, both.c.amount).label("refunded"),
        of(_REFUND, both.c.power_id).label("refunded_power"),
        count(_HELD).label("holds"), of(_HELD, both.c.power_id).label("held_power"),
        count(_SETTLED).label("settles"), count(_VOIDED).label("voids"),
        count(_EXPIRED).label("expiries"),
        func.coalesce(of(_SETTLED, both.c.amount), of(_EXPIRED, both.c.amount), 0)
        .label("settled"),
        func.max(both.c.event_id).label("event_id"),
    ).group_by(both.c.id).subquery()
    g = grouped.c
    charge_matches = and_(g.charges == 1, g.unmetered == 0, g.charged == -g.cost,
                          g.charged_power == g.power_id)
    held = and_(g.holds == 1, g.charges == 0, g.unmetered == 0, g.held_power == g.power_id)
    released = g.settles + g.voids + g.expiries
    valid = or_(
        and_(g.status == "rejected", g.charges + g.refunds + g.unmetered + g.holds == 0),
        # A hold: open; settled (by settle or expiry) at its cost; voided (by void or
        # expiry, which then takes nothing); settled and then refunded.
        and_(g.status == "held", held, released + g.refunds == 0),
        and_(g.status == "settled", held, released == 1, g.voids == 0, g.refunds == 0,
             g.settled == -g.cost),
        and_(g.status == "voided", held, released == 1, g.settles == 0, g.refunds == 0,
             g.settled == 0),
        and_(g.status == "refunded", held, released == 1, g.voids == 0, g.refunds == 1,
             g.settled == -g.cost, g.refunded == g.cost, g.refunded_power == g.power_id),
        # An unmetered user's hold: recorded, never journaled beyond its unmetered event.
        and_(g.status.in_(("held", "settled", "voided")), g.power_id.is_(None),
             g.unmetered == 1, g.charges + g.refunds + g.holds + released == 0),
        and_(g.status == "charged", g.power_id.is_(None), g.unmetered == 1,
             g.charges + g.refunds == 0),
        and_(g.status == "charged", charge_matches, g.refunds == 0),
        and_(g.status == "refunded", charge_matches, g.refunds == 1, g.refunded == g.cost,
             g.refunded_power == g.power_id),
    )
    # A comparison with a NULL is no proof: only a shape known valid passes.
    return (select(grouped).where(not_(func.coalesce(valid, false())))
            .order_by(g.event_id, g.id))


_MESSAGE_CHECK = _message_check()


def _message_problem(row: Any, name: str) -> Problem:
    """What is wrong with one message, in the words a reader needs first."""

    def problem(detail: str, expected: Any, found: Any) -> Problem:
        return Problem("message", name, f"message {row.id!r}: {detail}", expected, found,
                       row.event_id)

    if not row.rows:
        return problem("journaled, but not in the messages table", None, None)
    if row.charges > 1 or row.refunds > 1 or row.unmetered > 1 or row.holds > 1:
        return problem("journaled more than once", "1 charge, at most 1 refund",
                       f"{row.charges} charge(s), {row.holds} hold(s), {row.refunds} "
                       f"refund(s), {row.unmetered} unmetered")
    if row.settles + row.voids + row.expiries > 1:
        return problem("hold released more than once", "1 settle, void or expiry",
                       f"{row.settles} settle(s), {row.voids} void(s), {row.expiries} "
                       "expiry(ies)")
    journaled = _journaled_status(row)
    if journaled != row.status:
        return problem("status differs from its journal", journaled, row.status)
    if row.holds and row.status in ("settled", "refunded") and row.cost != -row.settled:
        return problem("cost differs from its journal", to_decimal(-row.settled),
                       None if row.cost is None else to_decimal(row.cost))
    if row.charged is not None and row.cost != -row.charged:
        return problem("cost differs from its journal", to_decimal(-row.charged),
                       None if row.cost is None else to_decimal(row.cost))
    if row.refunded is not None and row.refunded != row.cost:
        return problem("refund differs from its cost", to_decimal(row.cost or 0),
                       to_decimal(row.refunded))
    return problem("account differs from its journal", row.charged_power, row.power_id)


def _journaled_status(row: Any) -> str:
    if row.holds:
        if row.settles + row.voids + row.expiries == 0:
            return "held"
        if row.refunds:
            return "refunded"
        return "voided" if row.voids or (row.expiries and not row.settled) else "settled"
    if row.charges + row.refunds + row.unmetered == 0:
        return "rejected"
    if row.unmetered:
        return "charged" if not row.charges + row.refunds else "charged and unmetered"
    if not row.charges:
        return "refunded, never charged"
    return "refunded" if row.refunds else "charged"

