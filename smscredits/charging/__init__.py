"""Charging messages: one debit per message, within balance, overdraft and every limit.

A batch of messages is one transaction. Its accounts are read once, locked: on SQLite the
write transaction (``BEGIN IMMEDIATE``) already excludes every other writer, on Postgres the
power rows are taken ``FOR UPDATE`` in one fixed order. With the rows held, each message's
checks (balance, overdraft, the three limit windows) and debit are done in memory, in input
order; at the end the batch writes its message rows and events in bulk and each touched
power row once. A batch commits before any of its results is reported, so a reported charge
is durable and an interrupted batch leaves nothing behind. (``Charger.begin`` lets a big
batch's commit run on a second thread while the caller reads on; its results wait for it.)

Time: a batch takes its instant once its accounts are held, and a charge is stamped no
earlier than its account's latest event (``powers.last_at``; ``journal.stamp``). A batch that
waited behind another that committed after midnight, or a host whose clock is seconds behind
another's, thus charges into the newer day: an account's events never go back in time, so its
window counters never move backwards and never exceed their limits.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from functools import lru_cache
from typing import Any, NoReturn

from sqlalchemy import (
    Connection,
    and_,
    any_,
    bindparam,
    exc,
    func,
    literal_column,
    outerjoin,
    select,
    text,
    update,
)
from sqlalchemy.sql import Executable

from smscredits import clock, journal
from smscredits.amounts import MAX_MILLIS, format_amount, to_decimal
from smscredits.errors import (
    BadInput,
    Conflict,
    Exit,
    NotFound,
)
from smscredits.limits import REASON
from smscredits.parts import Parts, count_parts
from smscredits.pricing import PriceBook, Quote, Rejected, given_parts
from smscredits.reads import WINDOWS, window_keys
from smscredits.schedule import window_reset
from smscredits.storage.engine import (
    BULK_CHECKPOINT_PAGES,
    CHECKPOINT_PAGES,
    Db,
    set_checkpoint_pages,
)
from smscredits.storage.hot import (
    CopyStream,
    HotStatement,
    bulk_insert,
    driver_errors,
    prepared_update,
)
from smscredits.storage.tables import events, messages, powers, users
from smscredits.thresholds import rearm
from smscredits.validate import is_message_id

# A batch at least this big is part of a bulk run (see ``set_checkpoint_pages``).
BULK_BATCH = 100
# Exit code of a single charge refused for each reason.
EXIT_FOR = {
    "insufficient_credits": Exit.INSUFFICIENT,
    "daily_limit": Exit.LIMIT, "weekly_limit": Exit.LIMIT, "monthly_limit": Exit.LIMIT,
    "no_price": Exit.NOT_FOUND, "unknown_user": Exit.NOT_FOUND,
    "invalid_number": Exit.USAGE, "bad_input": Exit.USAGE,
    "user_disabled": Exit.CONFLICT, "conflict": Exit.CONFLICT,
    "amount_out_of_range": Exit.USAGE,
}


@dataclass(slots=True)  # not frozen: made once per line, and frozen costs 4x as much
class ChargeRequest:
    user: str
    to: str
    text: str | None = None
    parts: int | None = None
    id: str | None = None


@dataclass(slots=True)  # not frozen: a frozen dataclass takes 3x as long to make
class ChargeResult:
    status: str  # charged | rejected | error
    id: str | None
    user: str | None
    to: str | None
    reason: str | None = None
    message: str | None = None
    cost: Decimal | None = None
    parts: int | None = None
    encoding: str | None = None
    price: Decimal | None = None
    rule: str | None = None
    country: str | None = None
    balance: Decimal | None = None
    metered: bool = True
    replayed: bool = False
    # A refusal by the balance or a limit: the numbers that decided it (``Refused.numbers``).
    refusal: dict[str, Any] | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RESULT_FIELDS}

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "charged" else int(EXIT_FOR.get(self.reason or "", 1))


_RESULT_FIELDS = tuple(f.name for f in fields(ChargeResult))


def request_problem(req: ChargeRequest) -> str | None:
    """Why a request can be neither charged nor recorded as it is, or None (it can).

    A NUL, a lone surrogate, an over-long id or a value of the wrong type would fail the
    database driver, or the writing of the result, and with it the whole batch: such a
    request is bad input, answered on its own. Called for every charge, so the usual request
    (ASCII strings) is let through by one expression.
    """
    user, to, text, parts, msg_id = req.user, req.to, req.text, req.parts, req.id
    if (type(user) is str and user.isascii() and "\x00" not in user
            and type(to) is str and to.isascii() and "\x00" not in to
            and (text is None or (type(text) is str and (text.isascii() or _encodes(text))))
            and (parts is None or type(parts) is int)
            # ``is_message_id`` without its regex (a third of the check's time):
            # 1-128 characters, each printable ASCII but a space.
            and (msg_id is None or (type(msg_id) is str and 0 < len(msg_id) <= 128
                                    and msg_id.isascii() and msg_id.isprintable()
                                    and " " not in msg_id))):
        return None
    return (_string_problem("user", user, nul=True)
            or _string_problem("number (to)", to, nul=True)
            or (None if text is None else _string_problem("text", text, nul=False))
            or (None if parts is None or (type(parts) is int)
                else "parts must be a whole number")
            or (None if msg_id is None or (type(msg_id) is str and is_message_id(msg_id))
                else f"bad message id {_shown(msg_id)}: 1-128 printable ASCII characters, "
                     "no spaces"))


def _fit_to_look_up(reqs: list[ChargeRequest]) -> list[ChargeRequest]:
    """The requests whose names and ids a batch may send to the database before charging
    them (a NUL or a lone surrogate would fail the lookup, and the batch with it; the charge
    answers such a request as bad input): all of them when the batch's names and ids are
    ASCII text without a NUL, checked for the whole batch at once (a fraction of the
    per-request check, which this spares the usual batch), else those found fine."""
    try:
        names = "".join([r.user for r in reqs])
        ids = "".join([r.id for r in reqs if r.id is not None])
    except TypeError:  # a value that is not a string
        pass
    else:
        if names.isascii() and ids.isascii() and "\x00" not in names and "\x00" not in ids:
            return reqs
    return [r for r in reqs if request_problem(r) is None]


def _encodes(text: str) -> bool:
    """Whether a text is valid Unicode: it has no lone surrogate (only a str can)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _string_problem(name: str, value: object, *, nul: bool) -> str | None:
    if type(value) is not str:
        return f"{name} must be a string"
    if nul and "\x00" in value:
        return f"bad {name} {_shown(value)}: it contains a NUL character"
    if not _encodes(value):
        return f"bad {name} {_shown(value)}: not valid Unicode (a lone surrogate)"
    return None


def _shown(value: object) -> str:
    """A bad value as its message quotes it: escaped, and cut short if long."""
    if type(value) is not str:
        return type(value).__name__
    return repr(value[:40]) + ("..." if len(value) > 40 else "")


@dataclass
class _Account:
    user_id: int
    disabled: bool
    tz: str
    power_id: int | None


# The power row's state that a charge reads and moves, in this order.
STATE_COLUMNS = ("balance", "overdraft", "daily_limit", "weekly_limit", "monthly_limit",
                 "day_key", "day_spent", "week_key", "week_spent", "month_key", "month_spent",
                 "last_hash", "refill_below", "last_at")
# ... and what a batch writes back.
WRITTEN_COLUMNS = ("balance", "day_key", "day_spent", "week_key", "week_spent", "month_key",
                   "month_spent", "last_hash", "last_at")
SPENT_COLUMNS = ("balance", "day_spent", "week_spent", "month_spent", "last_hash", "last_at")


@dataclass(slots=True)
class _Power:
    """A held power row: the batch checks and debits it in memory, then writes it once."""

    id: int
    balance: int
    overdraft: int | None  # None: unlimited
    limits: tuple[int | None, int | None, int | None]  # day, week, month
    keys: list[int]
    spent: list[int]
    last_hash: str | None
    refill_below: int | None
    last_at: int  # the instant of the account's latest event
    rolled: bool = False  # a window key moved on since the row was last written

    @classmethod
    def of(cls, pid: int, row: Any) -> _Power:
        (balance, overdraft, day, week, month, dk, ds, wk, ws, mk, ms, last_hash,
         refill_below, last_at) = row
        return cls(pid, balance, overdraft, (day, week, month), [dk, wk, mk], [ds, ws, ms],
                   last_hash, refill_below, last_at)

    def take(self, cost: int, keys: tuple[int, int, int]) -> Rejected | None:
        """Debit ``cost`` in these windows if balance, overdraft and every limit allow it;
        else say why not and change nothing. (One charge each: written out flat.)

        No overdraft and no limit lets an amount leave the documented range: an unlimited
        overdraft ends at -MAX_MILLIS and a window without a limit at MAX_MILLIS, so each
        bound is still one comparison."""
        after, floor = self.balance - cost, self.overdraft
        if after < (-floor if floor is not None else -MAX_MILLIS):
            return _REFUSED[0] if floor is not None else _out_of_range("balance", after)
        (k0, k1, k2), held, spent = keys, self.keys, self.spent
        s0 = spent[0] + cost if held[0] == k0 else cost
        s1 = spent[1] + cost if held[1] == k1 else cost
        s2 = spent[2] + cost if held[2] == k2 else cost
        day, week, month = self.limits
        if (s0 > (day if day is not None else MAX_MILLIS)
                or s1 > (week if week is not None else MAX_MILLIS)
                or s2 > (month if month is not None else MAX_MILLIS)):
            return self.window_refusal((s0, s1, s2))
        if held[0] != k0 or held[1] != k1 or held[2] != k2:
            self.keys, self.rolled = [k0, k1, k2], True
        self.balance = after
        self.spent = [s0, s1, s2]
        return None

    def window_refusal(self, spent: tuple[int, int, int]) -> Rejected:
        """Why a window refuses a charge: a limit it would pass (day, week, month), else a
        counter past the documented range (the rare way out of ``take``)."""
        for limit, total, refused in zip(self.limits, spent, _REFUSED[1:], strict=True):
            if limit is not None and total > limit:
                return refused
        for window, total in zip(WINDOWS, spent, strict=True):
            if total > MAX_MILLIS:
                return _out_of_range(f"{window}'s spending", total)
        raise AssertionError("no window refuses this charge")  # pragma: no cover

    def written(self) -> tuple[Any, ...]:
        """``WRITTEN_COLUMNS`` and then the power id."""
        (dk, wk, mk), (ds, ws, ms) = self.keys, self.spent
        return (self.balance, dk, ds, wk, ws, mk, ms, self.last_hash, self.last_at, self.id)

    def spent_written(self) -> tuple[Any, ...]:
        """``SPENT_COLUMNS`` and then the power id: enough while no window rolled over."""
        ds, ws, ms = self.spent
        return (self.balance, ds, ws, ms, self.last_hash, self.last_at, self.id)


# Why a take is refused: insufficient credits, then each window's limit, in this order.
_REFUSED = (Rejected("insufficient_credits", "insufficient credits"),
            *(Rejected(REASON[w], f"{REASON[w].replace('_', ' ')} reached") for w in WINDOWS))


class Refused(Rejected):
    """A refusal by the balance or a limit, with the numbers that decided it: ``cost``,
    ``available``, ``balance``, ``overdraft``; or ``window``, ``limit``, ``spent``, ``cost``,
    ``resets_at`` (ISO UTC)."""

    def __init__(self, reason: str, message: str, numbers: dict[str, Any]) -> None:
        super().__init__(reason, message)
        self.numbers = numbers


def _with_numbers(refused: Rejected, power: _Power, cost: int, keys: tuple[int, int, int],
                  tz: str) -> Rejected:
    """``take``'s refusal with its numbers, made only when a charge is refused (the charged
    path pays nothing for it)."""
    if refused is _REFUSED[0]:
        floor = power.overdraft or 0
        numbers: dict[str, Any] = {
            "cost": to_decimal(cost), "available": to_decimal(power.balance + floor),
            "balance": to_decimal(power.balance), "overdraft": to_decimal(floor)}
        return Refused(refused.reason, "insufficient credits: cost {cost}, available "
                       "{available} (balance {balance}, overdraft {overdraft})".format_map(
                           numbers), numbers)
    if refused not in _REFUSED:
        return refused  # a counter past the documented range: its message says it all
    i = _REFUSED.index(refused) - 1
    window, limit = WINDOWS[i], power.limits[i]
    resets_at = clock.iso(clock.to_us(window_reset(window, keys[i], tz))) or ""
    numbers = {"window": window, "limit": to_decimal(limit or 0),
               "spent": to_decimal(power.spent[i] if power.keys[i] == keys[i] else 0),
               "cost": to_decimal(cost), "resets_at": resets_at}
    return Refused(refused.reason, "{label} reached: limit {limit}, spent {spent}, cost {cost}, "
                   "resets {resets}".format(label=REASON[window].replace("_", " "),
                                            resets=clock.local_text(resets_at, tz), **numbers),
                   numbers)


def _out_of_range(what: str, amount: int) -> Rejected:
    """A charge that would take an amount past the documented range (rare: made each time)."""
    bound = -MAX_MILLIS if amount < 0 else MAX_MILLIS
    return Rejected("amount_out_of_range",
                    f"the {what} after this charge, {format_amount(amount)}, would be "
                    f"{'below' if amount < 0 else 'above'} {format_amount(bound)}")


_state = [powers.c[name] for name in STATE_COLUMNS]
_ACCOUNT_COLUMNS = (users.c.name, users.c.id, users.c.disabled, users.c.tz,
                    powers.c.id.label("power_id"))
RELOAD_POWER = select(*_state).where(powers.c.id == bindparam("pid"))
# A message row, as the batch keeps and writes it: a tuple of these columns.
MESSAGE_COLUMNS = ("id", "user_name", "user_id", "power_id", "at", "to_number", "country",
                   "rule", "encoding", "parts", "price", "cost", "status", "reason",
                   "balance_after", "day_key", "week_key", "month_key")
MessageRow = tuple[Any, ...]
_UNREAD: Any = object()  # an account name the batch has not looked up


@dataclass(frozen=True)
class _Lookups:
    """A batch's reads, each one constant statement whose one parameter is the batch's whole
    list (a JSON array on SQLite, an array on Postgres): compiled once, run on the driver."""

    accounts: Executable
    known: Executable
    lock: Executable | None  # Postgres only
    held: Executable | None  # Postgres only

    @staticmethod
    @lru_cache(maxsize=2)
    def of(dialect: str) -> _Lookups:
        joined = outerjoin(users, powers, and_(powers.c.user_id == users.c.id,
                                               powers.c.kind == "credits"))
        if dialect != "postgresql":
            def member(col: Any, name: str) -> Any:
                return col.in_(select(literal_column("value"))
                               .select_from(func.json_each(bindparam(name))))

            # The write transaction holds the whole database: the state comes along.
            accounts = select(*_ACCOUNT_COLUMNS, *_state).select_from(joined)
            return _Lookups(accounts.where(member(users.c.name, "names")),
                            select(messages).where(member(messages.c.id, "ids")), None, None)
        from sqlalchemy.dialects.postgresql import ARRAY

        def any_of(col: Any, name: str) -> Any:
            return col == any_(bindparam(name, type_=ARRAY(col.type)))

        # The power rows are locked in one fixed order (two batches sharing accounts then
        # queue instead of deadlocking) and read as they are once locked.
        lock = (select(powers.c.id, *_state).where(any_of(powers.c.id, "ids"))
                .order_by(powers.c.id).with_for_update())
        # The usual case in one query: accounts with a credits power, that row locked. The
        # user's row is share-locked first, as `user set-tz` takes it before the power row:
        # a charge waiting for a zone change then reads the new zone with the recounted
        # windows (an unlocked row would be read as it was before the wait).
        held = (select(*_ACCOUNT_COLUMNS, *_state)
                .select_from(users.join(powers, and_(powers.c.user_id == users.c.id,
                                                     powers.c.kind == "credits")))
                .where(any_of(users.c.name, "names"))
                .order_by(powers.c.id).with_for_update(of=users, read=True)
                .suffix_with("FOR UPDATE OF powers"))
        return _Lookups(select(*_ACCOUNT_COLUMNS).select_from(joined)
                        .where(any_of(users.c.name, "names")),
                        select(messages).where(any_of(messages.c.id, "ids")), lock, held)


def _listed(values: list[Any], postgres: bool) -> Any:
    return values if postgres else json.dumps(values)


def parts_of(req: ChargeRequest) -> Parts:
    if (req.text is None) == (req.parts is None):
        raise BadInput("give either a text or a number of parts")
    return count_parts(req.text) if req.text is not None else given_parts(req.parts or 0)


@dataclass
class _Carried:
    """What a SQLite batch read, kept for the next batch of the same Charger.

    It is still true if nothing wrote to the database since this batch committed: no other
    connection (``PRAGMA data_version`` is unchanged) and no other transaction on this one
    (its ``total_changes`` is unchanged). Then the next batch skips reading the accounts,
    power rows and prices again: in a stream, most of each batch's accounts were in the last.
    """

    dbapi: Any
    version: int
    changes: int
    accounts: dict[str, _Account | None]
    powers: dict[int, _Power]

    @staticmethod
    def version_of(dbapi: Any) -> int:
        return dbapi.execute("PRAGMA data_version").fetchone()[0]

    def still_true(self, dbapi: Any) -> bool:
        return (dbapi is self.dbapi and dbapi.total_changes == self.changes
                and self.version_of(dbapi) == self.version)


class _Batch:
    """The state of one transaction's worth of charges."""

    def __init__(self, conn: Connection, db: Db, carried: _Carried | None = None,
                 book: PriceBook | None = None) -> None:
        self.conn, self.db = conn, db
        self.postgres = conn.dialect.name == "postgresql"
        # ``book``: the last batch's prices. Still true with what it carried; else the prices
        # are read again (every batch on Postgres), and the book, with its quotes, serves
        # while they are the same.
        self.book = (book if carried is not None and book is not None
                     else PriceBook.load(conn, book))
        self.accounts: dict[str, _Account | None] = carried.accounts if carried else {}
        self.powers: dict[int, _Power] = carried.powers if carried else {}  # held, by id
        self.pending: dict[str, MessageRow] = {}  # message rows by id, not yet written
        self.written: dict[str, MessageRow] = {}  # ... and those flushed in this batch
        self.known: dict[str, dict[str, Any]] = {}  # ... and those recorded before
        self.events: list[journal.EventTuple] = []
        # Postgres: the batch's events go to the server as they are made (see ``record``).
        self.stream: CopyStream | None = None
        self.replays = 0  # ids met again (in this batch or recorded before)
        self.moved: dict[int, _Power] = {}  # power rows debited since the last flush
        # One instant per batch (one transaction), taken again once its accounts are held
        # (``stamp``): its charges fall in the same windows.
        self.now = clock.now_us()
        self.keys: dict[str, tuple[int, int, int]] = {}

    def stamp(self) -> None:
        """Take the batch's instant now that its accounts are held: a batch that waited for
        another's lock is stamped after that one committed, not before."""
        self.now, self.keys = clock.now_us(), {}

    def window_keys(self, tz: str) -> tuple[int, int, int]:
        if tz not in self.keys:
            self.keys[tz] = window_keys(self.now, tz)
        return self.keys[tz]

    def prefetch(self, reqs: list[ChargeRequest], *, recall: bool = True) -> None:
        """Accounts (their power rows held) of a whole batch, in a few queries; with
        ``recall``, also the outcomes already recorded under the batch's message ids
        (without, a recorded id fails the batch's insert, which is then redone recalling)."""
        self.end_stream()
        batch_names = {r.user for r in reqs}
        # Not ``batch_names - self.accounts.keys()``: that walks every carried account.
        names = sorted(n for n in batch_names if n not in self.accounts)
        lookups = _Lookups.of(self.conn.dialect.name)
        if names and lookups.held is not None:
            self.read_accounts(lookups.held, names, with_state=True)
            names = [n for n in names if n not in self.accounts]
        if names:
            self.read_accounts(lookups.accounts, names, with_state=not self.postgres)
        for name in batch_names:
            self.accounts.setdefault(name, None)  # unknown users
        if self.postgres and lookups.lock is not None:
            wanted = {a.power_id for a in self.accounts.values()
                      if a is not None and a.power_id is not None
                      and a.power_id not in self.powers}
            if wanted:
                self.lock(lookups.lock, sorted(wanted))
        ids = sorted({r.id for r in reqs if r.id is not None}) if recall else []
        if ids:
            known = HotStatement(self.conn, lookups.known)
            for row in known.rows({"ids": _listed(ids, self.postgres)}):
                record = dict(zip(known.columns(), row, strict=True))
                self.known[record["id"]] = record

    def read_accounts(self, stmt: Executable, names: list[str], *, with_state: bool) -> None:
        for row in HotStatement(self.conn, stmt).rows({"names": _listed(names, self.postgres)}):
            name, user_id, disabled, tz, power_id = row[:5]
            self.accounts[name] = _Account(user_id, bool(disabled), tz or self.db.default_tz,
                                           power_id)
            if power_id is not None and with_state:
                self.powers[power_id] = _Power.of(power_id, row[5:])

    def lock(self, stmt: Executable, power_ids: list[int]) -> None:
        for row in HotStatement(self.conn, stmt).rows({"ids": power_ids}):
            self.powers[row[0]] = _Power.of(row[0], row[1:])
        for account in self.accounts.values():
            if account is not None and account.power_id not in self.powers:
                account.power_id = None  # deleted since the accounts were read: unmetered

    def account(self, name: str) -> _Account | None:
        if name not in self.accounts:
            self.prefetch([ChargeRequest(name, "")])
        return self.accounts[name]

    def charge_all(self, reqs: list[ChargeRequest]) -> list[ChargeResult]:
        return [self.charge(r) for r in reqs]

    def charge(self, req: ChargeRequest) -> ChargeResult:
        problem = request_problem(req)
        if problem is not None:  # nothing of it can be recorded: no id, user or number either
            return ChargeResult("error", None, None, None, reason="bad_input", message=problem)
        try:
            quote: Quote | None = self.book.quote(req.to, parts_of(req))
            rejection = None
        except Rejected as r:
            quote, rejection = None, r
        except BadInput as e:
            return ChargeResult("error", req.id, req.user, req.to, reason="bad_input",
                                message=e.message)
        account = self.accounts.get(req.user, _UNREAD)
        if account is _UNREAD:
            account = self.account(req.user)
        if req.id is not None and (
                req.id in self.pending or req.id in self.written or req.id in self.known):
            return self.first_result(req, account, quote, rejection)
        # Precedence (documented): number, price, then the user.
        if rejection is None and account is None:
            rejection = Rejected("unknown_user", f"unknown user {req.user!r}")
        elif rejection is None and account.disabled:
            rejection = Rejected("user_disabled", f"user {req.user!r} is disabled")
        if rejection is not None or quote is None or account is None:
            assert rejection is not None
            return self.reject(_base(req), account, quote, rejection)
        if account.power_id is None:
            return self.unmetered(_base(req), account, quote)
        return self.debit(req, account, quote, self.powers[account.power_id])

    def debit(self, req: ChargeRequest, account: _Account, quote: Quote,
              power: _Power) -> ChargeResult:
        """The hot path: one metered charge, checked and taken in memory."""
        now, cost = self.now, quote.cost
        if power.last_at > now:  # the account's latest event is later: join its instant
            now = power.last_at
            keys = window_keys(now, account.tz)
        else:
            keys = self.keys.get(account.tz) or self.window_keys(account.tz)
        refusal = power.take(cost, keys)
        if refusal is not None:
            return self.reject(_base(req), account, quote,
                               _with_numbers(refusal, power, cost, keys, account.tz))
        self.moved[power.id] = power
        msg_id = req.id or secrets.token_hex(8)
        balance = power.balance
        event = journal.charged(now, account.user_id, power.id, cost, balance, msg_id,
                                self.db.actor, quote.detail, power.last_hash)
        power.last_hash, power.last_at = event[-1], now
        self.record(event)
        if power.refill_below is not None and balance < power.refill_below:
            balance = self.refill(account, power)
        # Recorded with the balance the caller is told, so that a replay tells the same.
        self.pending[msg_id] = (
            msg_id, req.user[:64], account.user_id, power.id, now, quote.to, quote.country,
            quote.rule, quote.encoding, quote.parts, quote.price, cost, "charged", None,
            balance, *keys)
        return ChargeResult("charged", msg_id, req.user, quote.to, cost=quote.cost_shown,
                            parts=quote.parts, encoding=quote.encoding,
                            price=quote.price_shown, rule=quote.rule, country=quote.country,
                            balance=to_decimal(balance))

    def refill(self, account: _Account, power: _Power) -> int:
        """A threshold plan fires in the charge's own transaction, after the charge's event:
        the held row is written, the plan moves it in the database, and it is read again."""
        from smscredits.refills import fire_thresholds

        self.flush()
        balance = fire_thresholds(self.conn, account.user_id, power.balance, self.db.actor)
        row = self.conn.execute(RELOAD_POWER, {"pid": power.id}).one()
        self.powers[power.id] = _Power.of(power.id, row)
        return balance

    def unmetered(self, base: ChargeResult, account: _Account, quote: Quote) -> ChargeResult:
        now = clock.now_us()
        msg_id = base.id or secrets.token_hex(8)
        self.record(journal.as_tuple(journal.build(
            at=now, kind="message.unmetered", actor=self.db.actor, user_id=account.user_id,
            ref=msg_id, detail={"to": quote.to, "parts": quote.parts, "rule": quote.rule},
        )))
        self.remember(msg_id, account, replace(quote, cost=0), now, "charged", None, None, None,
                      base.user or "")
        return replace(base, status="charged", id=msg_id, **{**_quoted(quote), "cost": Decimal(0)},
                       metered=False, message="user has no credits power: not metered")

    def reject(self, base: ChargeResult, account: _Account | None, quote: Quote | None,
               rejection: Rejected) -> ChargeResult:
        if base.id is not None:
            self.remember(base.id, account, quote, clock.now_us(), "rejected", rejection.reason,
                          None, None, base.user or "", to=base.to)
        extra = _quoted(quote) if quote is not None else {}
        return replace(base, reason=rejection.reason, message=rejection.message,
                       refusal=getattr(rejection, "numbers", None), **extra)

    def remember(self, msg_id: str, account: _Account | None, quote: Quote | None, at: int,
                 status: str, reason: str | None, balance: int | None,
                 keys: tuple[int, int, int] | None, name: str, to: str | None = None) -> None:
        self.pending[msg_id] = (
            msg_id, name[:64], account.user_id if account else None,
            account.power_id if account else None, at,
            quote.to if quote else (to or "")[:32],
            quote.country if quote else None, quote.rule if quote else None,
            quote.encoding if quote else None, quote.parts if quote else 0,
            quote.price if quote else None, quote.cost if quote else None,
            status, reason, balance, *(keys or (None, None, None)),
        )

    def first_result(self, req: ChargeRequest, account: _Account | None,
                     quote: Quote | None, rejection: Rejected | None = None) -> ChargeResult:
        """The recorded outcome of an id seen before, or a conflict if it does not match."""
        key = req.id or ""
        self.replays += 1
        held = self.pending.get(key) or self.written.get(key)
        row = dict(zip(MESSAGE_COLUMNS, held, strict=True)) if held else self.known[key]
        # A refusal is keyed by the user's name as requested (it touched no account: an
        # ``unknown_user`` refusal replays after the user is created); a charge also by the
        # account it debited.
        same_user = row["user_name"] == req.user and (row["status"] == "rejected" or (
            row["user_id"] == (account.user_id if account else None)))
        # A cost past the range (refused with its quote) is unlike any recorded one.
        too_dear = rejection is not None and rejection.reason == "amount_out_of_range"
        same_cost = (quote is None and not too_dear) or row["cost"] is None or (
            quote is not None and row["cost"] == quote.cost) or (
            row["power_id"] is None and row["status"] != "rejected")
        if not (same_user and same_cost):
            return ChargeResult(
                "error", req.id, req.user, req.to, reason="conflict",
                message=f"message id {req.id!r} was already used for another user or cost",
            )
        return _from_row(row, req)

    def record(self, event: journal.EventTuple) -> None:
        """Keep an event for ``flush``; on Postgres, send it now through an open COPY, which
        the server inserts while the batch goes on (its share of the batch's wait)."""
        if not self.postgres:
            self.events.append(event)
            return
        if self.stream is None:
            self.stream = CopyStream(self.conn, events, journal.EVENT_COLUMNS)
        self.stream.write(event)

    def end_stream(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.close()

    def abort(self, e: BaseException) -> None:
        """After a failure: end an open COPY, so that the transaction can be rolled back."""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.abort(e)

    def flush(self, deferred: list[Callable[[], None]] | None = None) -> None:
        """Write the collected message rows and events, and each moved power row once; with
        ``deferred``, the power rows' statements are made and left there to run."""
        self.end_stream()
        if self.pending:
            bulk_insert(self.conn, messages, MESSAGE_COLUMNS, list(self.pending.values()))
            self.written.update(self.pending)
        if self.events:
            bulk_insert(self.conn, events, journal.EVENT_COLUMNS, self.events)
        if self.moved:
            rolled: list[_Power] = []
            same: list[_Power] = []
            for p in self.moved.values():
                (rolled if p.rolled else same).append(p)
            updates = []
            if rolled:
                updates.append(prepared_update(self.conn, powers, "id", WRITTEN_COLUMNS,
                                               [p.written() for p in rolled]))
                for p in rolled:
                    p.rolled = False
            if same:  # the usual case: no window key to write
                updates.append(prepared_update(self.conn, powers, "id", SPENT_COLUMNS,
                                               [p.spent_written() for p in same]))
            if deferred is None:
                for run in updates:
                    run()
            else:
                deferred.extend(updates)
            self.moved = {}
        self.pending, self.events = {}, []


def _base(req: ChargeRequest) -> ChargeResult:
    return ChargeResult("rejected", req.id, req.user, req.to)


def _quoted(quote: Quote) -> dict[str, Any]:
    return {"to": quote.to, "cost": to_decimal(quote.cost), "parts": quote.parts,
            "encoding": quote.encoding, "price": to_decimal(quote.price), "rule": quote.rule,
            "country": quote.country}


def _from_row(row: dict[str, Any], req: ChargeRequest) -> ChargeResult:
    status = "rejected" if row["status"] == "rejected" else "charged"
    return ChargeResult(
        status, row["id"], req.user, row["to_number"] or req.to, reason=row["reason"],
        message="already processed: first result returned, nothing charged",
        cost=None if row["cost"] is None else to_decimal(row["cost"]),
        parts=row["parts"] or None, encoding=row["encoding"],
        price=None if row["price"] is None else to_decimal(row["price"]),
        rule=row["rule"], country=row["country"],
        balance=None if row["balance_after"] is None else to_decimal(row["balance_after"]),
        metered=row["power_id"] is not None or status == "rejected", replayed=True,
    )


class Pending:
    """A charged batch whose transaction is committing (``Charger.begin``)."""

    def __init__(self, charger: Charger, conn: Connection, results: list[ChargeResult],
                 kept: _Carried | None, recall: bool, commit: ExitStack, background: bool,
                 deferred: list[Callable[[], None]]) -> None:
        # ``deferred`` (statements left to run before the commit) comes with ``background``.
        self._charger, self._results, self._kept, self._recall = charger, results, kept, recall
        self._commit = commit
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            # Only the driver's commit runs on the thread: it holds no lock Python needs
            # while it waits on the disk or the server. SQLAlchemy's own bookkeeping (a
            # commit that finds nothing left to do, the connection's return to its pool)
            # stays in the caller's thread, so the two threads do not trade Python's lock.
            self._thread = threading.Thread(target=self._driver_commit, args=(conn, deferred),
                                            daemon=True, name="smscredits-commit")
            self._thread.start()

    def _driver_commit(self, conn: Connection, deferred: list[Callable[[], None]]) -> None:
        try:
            for run in deferred:  # statements left to the end, all of them server work
                run()
            with driver_errors(conn, "COMMIT"):
                conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
        except BaseException as e:  # raised by wait(), in the caller's thread
            self._failure = e

    def discard(self) -> None:
        """Let the batch go unwaited: its commit thread is joined (a commit it ran stands)
        and the transaction left is rolled back."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with contextlib.suppress(Exception):
            self._commit.__exit__(RuntimeError, RuntimeError("discarded"), None)

    @property
    def results(self) -> list[ChargeResult]:
        """The results as they will be once committed: not to be reported before ``wait``."""
        return self._results

    def wait(self) -> list[ChargeResult]:
        """The batch's results, once committed; its commit's error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        charger = self._charger
        if charger._pending is self:
            charger._pending = None  # settled, whatever happens: a failure carries nothing
            try:
                if self._failure is None:
                    self._commit.close()  # commits what is left, returns the connection
                else:  # rolls back; Db.write words a database error itself
                    self._commit.__exit__(type(self._failure), self._failure,
                                          self._failure.__traceback__)
                    raise self._failure
            except BaseException as e:
                self._failure = e
                raise
            charger._carried, charger._recall = self._kept, self._recall
        if self._failure is not None:
            raise self._failure
        return self._results


class Charger:
    """Charges messages against one database; gateway code keeps one and calls it."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self._carried: _Carried | None = None
        # Whether to look up a batch's message ids before charging it. Ids are new in a
        # healthy stream, so by default a batch does not: an id recorded before fails its
        # insert, and the batch is redone with the lookup (as is the next batch).
        self._recall = False
        self._checkpoint_pages = CHECKPOINT_PAGES  # SQLite's, until batches are big
        self._pending: Pending | None = None
        # An in-memory SQLite database lives in its one connection, which stays in its thread.
        self._background = not (db.is_sqlite and db.engine.url.database in (None, "", ":memory:"))
        # Kept from batch to batch: taking a connection from the pool and handing it back
        # (with the pool's reset) costs a fifth of a one-message charge on SQLite.
        self._conn: Connection | None = None
        self._book: PriceBook | None = None  # the last batch's prices

    def __enter__(self) -> Charger:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:  # a batch not waited for is not to be committed now: it is rolled back
            self.release()

    def close(self) -> None:
        """Wait for a batch still committing (raising its error), then give back the
        connection. The Charger can be used again; it takes a new one."""
        try:
            self.settle()
        finally:
            self.release()

    def release(self) -> None:
        """Give back the connection without waiting: a batch in flight is rolled back,
        unless its commit has already run."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.discard()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.db.engine.connect()
        return self._conn

    def charge(self, req: ChargeRequest) -> ChargeResult:
        return self.charge_batch([req])[0]

    def charge_batch(self, reqs: Iterable[ChargeRequest]) -> list[ChargeResult]:
        """Charge several messages in one transaction (all results durable on return)."""
        return self.begin(reqs, background=False).wait()

    def begin(self, reqs: Iterable[ChargeRequest], *, background: bool = True) -> Pending:
        """Charge several messages in one transaction and start its commit; ``wait()`` on
        the result for the results, durable. Until then they are not to be reported.

        With ``background`` a big batch commits on a second thread: the commit waits on the
        disk or the server and needs no Python, so the caller can meanwhile read its next
        lines and format these results. The Charger takes no other batch before ``wait``.
        """
        self.settle()
        reqs = list(reqs)
        behind = background and self._background and len(reqs) >= BULK_BATCH
        for attempt in range(5):
            carried, self._carried = self._carried, None  # a failed batch carries nothing
            try:
                # On Postgres the power rows' UPDATE, all server work, goes behind too.
                deferred: list[Callable[[], None]] = []
                with ExitStack() as held:
                    conn = held.enter_context(self.db.transaction(self._connection()))
                    if self.db.is_sqlite:
                        self._checkpoints_for(conn, len(reqs))
                    batch = _Batch(conn, self.db, self._still_true(conn, carried), self._book)
                    self._book = batch.book
                    try:
                        batch.prefetch(_fit_to_look_up(reqs), recall=self._recall)
                        batch.stamp()
                        results = batch.charge_all(reqs)
                        batch.flush(deferred if behind and batch.postgres else None)
                    except BaseException as e:
                        batch.abort(e)
                        raise
                    kept = self._kept(conn, batch)
                    commit = held.pop_all()  # the transaction outlives this block
            except exc.IntegrityError:
                # One of these message ids was recorded before (unlooked-up, or by another
                # process meanwhile): redo the batch, recalling, so it replays that result.
                self._recall = True
                if attempt == 4:
                    raise
                continue
            self._pending = Pending(self, conn, results, kept, batch.replays > 0, commit,
                                    behind, deferred)
            return self._pending
        raise AssertionError("unreachable")  # pragma: no cover

    def settle(self) -> None:
        """Wait for a batch still committing (``begin``), if any; raise if its commit failed."""
        if self._pending is not None:
            self._pending.wait()

    def _checkpoints_for(self, conn: Connection, size: int) -> None:
        pages = BULK_CHECKPOINT_PAGES if size >= BULK_BATCH else CHECKPOINT_PAGES
        if pages != self._checkpoint_pages:
            set_checkpoint_pages(conn, pages)
            self._checkpoint_pages = pages

    @staticmethod
    def _still_true(conn: Connection, carried: _Carried | None) -> _Carried | None:
        dbapi = conn.connection.dbapi_connection
        return carried if carried is not None and carried.still_true(dbapi) else None

    @staticmethod
    def _kept(conn: Connection, batch: _Batch) -> _Carried | None:
        if batch.postgres:  # rows are locked and read anew by each transaction
            return None
        dbapi: Any = conn.connection.dbapi_connection
        return _Carried(dbapi, _Carried.version_of(dbapi), dbapi.total_changes, batch.accounts,
                        batch.powers)


@dataclass
class BatchSummary:
    """What a stream of charges did, counted apart: new charges, replays of earlier results
    (a rerun of a file charges nothing), refusals by reason and errors (bad lines, conflicts)
    by reason. ``cost`` (millis) is what this run charged, replays excluded."""

    lines: int = 0
    charged: int = 0
    replayed: int = 0
    rejected: int = 0
    errors: int = 0
    cost: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    errors_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def malformed(self) -> int:
        return self.errors_by_reason.get("bad_input", 0)

    def add_all(self, results: list[ChargeResult]) -> None:
        spent = Decimal(0)
        for r in results:
            if r.replayed:
                self.replayed += 1
            elif r.status == "charged":
                self.charged += 1
                if r.cost is not None:
                    spent += r.cost
            elif r.status == "rejected":
                self.rejected += 1
                _count(self.rejected_by_reason, r.reason)
            else:
                self.errors += 1
                _count(self.errors_by_reason, r.reason)
        self.lines += len(results)
        self.cost += int(spent * 1000)


def _count(counts: dict[str, int], reason: str | None) -> None:
    key = reason or "error"
    counts[key] = counts.get(key, 0) + 1


# -- refunds -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    user: str
    amount: Decimal
    balance: Decimal
    event_id: int


def _refund_refused(conn: Connection, msg_id: str, power_id: int, cost: int) -> NoReturn:
    """Why a refund's UPDATE found no row: its power was deleted, or the refund would take
    the balance past the documented maximum."""
    balance = conn.execute(select(powers.c.balance).where(powers.c.id == power_id)).scalar()
    if balance is None:
        raise Conflict(f"the credits power of message {msg_id!r} was deleted", code="no_power")
    raise BadInput(f"refund of {msg_id!r} refused: the balance after it, "
                   f"{format_amount(balance + cost)}, would be above {format_amount(MAX_MILLIS)}",
                   code="amount_out_of_range")


def refund(db: Db, msg_id: str, *, note: str | None = None) -> Refund:
    """Give a charged message's credits back, once, and free the windows it was charged in."""
    with db.write() as conn:
        stmt = select(messages, users.c.name, users.c.tz).outerjoin(
            users, users.c.id == messages.c.user_id)
        stmt = stmt.where(messages.c.id == msg_id)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(of=messages)
        msg = conn.execute(stmt).mappings().first()
        if msg is None or msg["status"] == "rejected":
            raise NotFound(f"no charged message {msg_id!r}", code="unknown_message")
        if msg["status"] == "refunded":
            raise Conflict(f"message {msg_id!r} was already refunded", code="already_refunded")
        if msg["power_id"] is None:
            raise Conflict(f"message {msg_id!r} was not metered: nothing to refund",
                           code="not_metered")
        cost = msg["cost"]
        values: dict[str, Any] = {"balance": powers.c.balance + cost}
        # The message's windows in the user's zone now: after `user set-tz` the counters
        # hold the new zone's windows (the keys stored with the message are the old zone's).
        mkeys = window_keys(msg["at"], msg["tz"] or db.default_tz)
        for window, mkey in zip(WINDOWS, mkeys, strict=True):
            col = powers.c[f"{window}_spent"]
            key_col = powers.c[f"{window}_key"]
            # Only the window the message was charged in gets its room back.
            values[f"{window}_spent"] = text(
                f"CASE WHEN {key_col.name} = :{window}_mkey THEN {col.name} - :refund "
                f"ELSE {col.name} END"
            ).bindparams(**{f"{window}_mkey": mkey, "refund": cost})
        row = conn.execute(
            update(powers).where(powers.c.id == msg["power_id"],
                                 powers.c.balance <= MAX_MILLIS - cost).values(**values)
            .returning(powers.c.balance, powers.c.last_hash)
        ).first()
        if row is None:
            _refund_refused(conn, msg_id, msg["power_id"], cost)

        rearm(conn, msg["user_id"], row.balance)
        conn.execute(update(messages).where(messages.c.id == msg_id).values(status="refunded"))
        event_id = journal.record(
            conn, at=clock.now_us(), kind="message.refunded", actor=db.actor,
            user_id=msg["user_id"], power_id=msg["power_id"], amount=cost,
            balance_after=row.balance, ref=msg_id, note=note,
        )
    return Refund(msg_id, msg["name"], to_decimal(cost), to_decimal(row.balance), event_id)
