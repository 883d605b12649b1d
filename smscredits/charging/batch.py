"""One transaction's worth of charges (``Batch``): its accounts read and held, each
message checked and debited in memory in input order, then every row written in bulk."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Connection,
)
from sqlalchemy.sql import Executable

from smscredits import clock, journal
from smscredits.amounts import format_amount, to_decimal
from smscredits.charging.acts import act
from smscredits.charging.model import (
    ChargeRequest,
    ChargeResult,
    MessageOp,
    parts_of,
    request_problem,
)
from smscredits.charging.rule import BatchUser, HeldPower, with_numbers
from smscredits.errors import (
    BadInput,
)
from smscredits.holds import Rules
from smscredits.limits import Keys, keys_at
from smscredits.pricing import PriceBook, Quote, Rejected
from smscredits.storage.charge_sql import (
    RELOAD_POWER,
    SPENT_COLUMNS,
    WRITTEN_COLUMNS,
    Lookups,
    listed,
    sqlite_data_version,
)
from smscredits.storage.engine import (
    Db,
)
from smscredits.storage.hot import (
    CopyStream,
    HotStatement,
    bulk_insert,
    prepared_update,
)
from smscredits.storage.tables import events, messages, powers
from smscredits.thresholds import rearm

# A message row, as the batch keeps and writes it: a tuple of these columns.
MESSAGE_COLUMNS = ("id", "user_name", "user_id", "power_id", "at", "to_number", "country",
                   "rule", "encoding", "parts", "price", "cost", "status", "reason",
                   "balance_after", "day_key", "week_key", "month_key", "expires_at")
MessageRow = tuple[Any, ...]
# What an act on a recorded message may change of its row (``Batch.change``).
CHANGED_COLUMNS = ("parts", "cost", "status", "reason", "balance_after")  # the table's order
_UNREAD: Any = object()  # an account name the batch has not looked up


@dataclass
class Carried:
    """What a SQLite batch read, kept for the next batch of the same Charger.

    It is still true if nothing wrote to the database since this batch committed: no other
    connection (``PRAGMA data_version`` is unchanged) and no other transaction on this one
    (its ``total_changes`` is unchanged). Then the next batch skips reading the accounts,
    power rows and prices again: in a stream, most of each batch's accounts were in the last.
    """

    dbapi: Any
    version: int
    changes: int
    accounts: dict[str, BatchUser | None]
    powers: dict[int, HeldPower]
    owners: dict[int, BatchUser]

    @staticmethod
    def version_of(dbapi: Any) -> int:
        return sqlite_data_version(dbapi)

    def still_true(self, dbapi: Any) -> bool:
        return (dbapi is self.dbapi and dbapi.total_changes == self.changes
                and self.version_of(dbapi) == self.version)



class Batch:
    """The state of one transaction's worth of charges."""

    def __init__(self, conn: Connection, db: Db, carried: Carried | None = None,
                 book: PriceBook | None = None) -> None:
        self.conn, self.db = conn, db
        self.postgres = conn.dialect.name == "postgresql"
        # ``book``: the last batch's prices. Still true with what it carried; else the prices
        # are read again (every batch on Postgres), and the book, with its quotes, serves
        # while they are the same.
        self.book = (book if carried is not None and book is not None
                     else PriceBook.load(conn, book))
        self.accounts: dict[str, BatchUser | None] = carried.accounts if carried else {}
        self.powers: dict[int, HeldPower] = carried.powers if carried else {}  # held, by id
        self.pending: dict[str, MessageRow] = {}  # message rows by id, not yet written
        self.written: dict[str, MessageRow] = {}  # ... and those flushed in this batch
        self.known: dict[str, dict[str, Any]] = {}  # ... and those recorded before
        # Rows recorded before this batch (or flushed in it) that an act changed: by id.
        self.changed: dict[str, dict[str, Any]] = {}
        self.unwritten: dict[str, dict[str, Any]] = {}  # ... not yet written
        self.shown: dict[int, str] = {}  # instants as ISO text, made once
        # The user of each power read, by power id.
        self.owners: dict[int, BatchUser] = carried.owners if carried else {}
        self.events: list[journal.EventTuple] = []
        # Postgres: the batch's events go to the server as they are made (see ``record``).
        self.stream: CopyStream | None = None
        self.replays = 0  # ids met again (in this batch or recorded before)
        self.moved: dict[int, HeldPower] = {}  # power rows debited since the last flush
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
            self.keys[tz] = keys_at(self.now, tz)
        return self.keys[tz]

    def prefetch(self, reqs: list[ChargeRequest], *, recall: bool = True,
                 acts: list[MessageOp] | None = None) -> None:
        """Accounts (their power rows held) of a whole batch, in a few queries; with
        ``recall``, also the outcomes already recorded under the batch's message ids
        (without, a recorded id fails the batch's insert, which is then redone recalling).
        ``acts``: their messages, and the accounts of those, read and held too."""
        self.end_stream()
        batch_names = {r.user for r in reqs}
        # Not ``batch_names - self.accounts.keys()``: that walks every carried account.
        names = sorted(n for n in batch_names if n not in self.accounts)
        lookups = Lookups.of(self.conn.dialect.name)
        acted = sorted({a.id for a in acts if type(a.id) is str}) if acts else []
        pids = self.acted_powers(lookups.known, acted) if acted else []
        if pids:  # on Postgres, with the accounts by name: one lock statement, one order
            self.read_accounts(lookups.by_power, names, pids=pids, with_state=True)
            names = [n for n in names if n not in self.accounts]
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
        if acted and self.postgres:  # as they are now that their accounts are held
            self.recall(lookups.acted_on, acted)
        ids = sorted({r.id for r in reqs if r.id is not None}) if recall else []
        if ids:
            self.recall(lookups.known, ids)

    def recall(self, stmt: Executable, ids: list[str]) -> None:
        known = HotStatement(self.conn, stmt)
        rows = known.rows({"ids": listed(ids, self.postgres)})
        columns = known.columns()
        for row in rows:
            record = dict(zip(columns, row, strict=True))
            self.known[record["id"]] = record

    def acted_powers(self, stmt: Executable, ids: list[str]) -> list[int]:
        """The power rows of the messages acted on, not yet read (the messages are read
        unlocked here, and again once these are held)."""
        self.recall(stmt, ids)
        return sorted({row["power_id"] for i in ids if (row := self.known.get(i)) is not None
                       and row["power_id"] is not None and row["power_id"] not in self.owners})

    def read_accounts(self, stmt: Executable, names: list[str], *, with_state: bool,
                      pids: list[int] | None = None) -> None:
        params = {"names": listed(names, self.postgres)}
        if pids is not None:
            params = {"pids": listed(pids, self.postgres),
                      **(params if self.postgres else {})}
        for row in HotStatement(self.conn, stmt).rows(params):
            name, user_id, disabled, tz, power_id = row[:5]
            account = BatchUser(user_id, bool(disabled), tz or self.db.default_tz, power_id)
            self.accounts[name] = account
            if power_id is not None and with_state:
                self.powers[power_id] = HeldPower.of(power_id, row[5:])
                self.owners[power_id] = account

    def lock(self, stmt: Executable, power_ids: list[int]) -> None:
        for row in HotStatement(self.conn, stmt).rows({"ids": power_ids}):
            self.powers[row[0]] = HeldPower.of(row[0], row[1:])
        for account in self.accounts.values():
            if account is not None and account.power_id not in self.powers:
                account.power_id = None  # deleted since the accounts were read: unmetered
            elif account is not None and account.power_id is not None:
                self.owners[account.power_id] = account

    def account(self, name: str) -> BatchUser | None:
        if name not in self.accounts:
            self.prefetch([ChargeRequest(name, "")])
        return self.accounts[name]

    def charge_all(self, reqs: list[ChargeRequest | MessageOp]) -> list[ChargeResult]:
        return [self.charge(r) if type(r) is ChargeRequest else act(self, r)  # type: ignore[arg-type]
                for r in reqs]

    def message(self, msg_id: str) -> dict[str, Any] | None:
        """A message as the batch has it: made in it, changed by it, or recorded before."""
        row = self.pending.get(msg_id)
        if row is not None:
            return dict(zip(MESSAGE_COLUMNS, row, strict=True))
        if msg_id in self.changed:
            return self.changed[msg_id]
        row = self.written.get(msg_id)
        if row is not None:
            return dict(zip(MESSAGE_COLUMNS, row, strict=True))
        return self.known.get(msg_id)

    def change(self, msg_id: str, row: dict[str, Any], **values: Any) -> None:
        """Change ``CHANGED_COLUMNS`` of a message the batch has (``row``: as ``message``
        gives it)."""
        row = {**row, **values}
        if msg_id in self.pending:
            self.pending[msg_id] = tuple(row[c] for c in MESSAGE_COLUMNS)
        else:
            self.changed[msg_id] = self.unwritten[msg_id] = row

    def raised(self, user_id: int, power: HeldPower) -> None:
        """After a balance rose (a refund): threshold plans it reached are armed again."""
        self.flush()
        rearm(self.conn, user_id, power.balance)
        power.refill_below = HeldPower.of(
            power.id, self.conn.execute(RELOAD_POWER, {"pid": power.id}).one()).refill_below

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
            return self.unmetered(_base(req), account, quote, hold=req.hold, ttl=req.ttl)
        return self.debit(req, account, quote, self.powers[account.power_id])

    def debit(self, req: ChargeRequest, account: BatchUser, quote: Quote,
              power: HeldPower) -> ChargeResult:
        """The hot path: one metered charge, checked and taken in memory."""
        now, cost = self.now, quote.cost
        if power.last_at > now:  # the account's latest event is later: join its instant
            now = power.last_at
            keys = keys_at(now, account.tz)
        else:
            keys = self.keys.get(account.tz) or self.window_keys(account.tz)
        refusal = power.take(cost, keys, hold=req.hold)
        if refusal is not None:
            return self.reject(_base(req), account, quote,
                               with_numbers(refusal, power, cost, keys, account.tz))
        self.moved[power.id] = power
        msg_id = req.id or secrets.token_hex(8)
        balance = power.balance
        if req.hold:
            return self.held(req, msg_id, account, quote, power, now, keys)
        event = journal.charged(now, account.user_id, power.id, -cost, balance, msg_id,
                                self.db.actor, quote.detail, power.last_hash)
        power.last_hash, power.last_at = event[-1], now
        self.record(event)
        if power.refill_below is not None and balance < power.refill_below:
            balance = self.refill(account, power)
        # Recorded with the balance the caller is told, so that a replay tells the same.
        self.pending[msg_id] = (
            msg_id, req.user[:64], account.user_id, power.id, now, quote.to, quote.country,
            quote.rule, quote.encoding, quote.parts, quote.price, cost, "charged", None,
            balance, *keys, None)
        return ChargeResult("charged", msg_id, req.user, quote.to, cost=quote.cost_shown,
                            parts=quote.parts, encoding=quote.encoding,
                            price=quote.price_shown, rule=quote.rule, country=quote.country,
                            balance=to_decimal(balance))

    def held(self, req: ChargeRequest, msg_id: str, account: BatchUser, quote: Quote,
             power: HeldPower, now: int, keys: Keys) -> ChargeResult:
        """A hold taken (``power.take``): its event and its message row, until when it holds."""
        expires = now + (req.ttl if req.ttl is not None else self.rules().ttl_us)
        expires_at = self.shown.get(expires)
        if expires_at is None:  # a batch's holds share an instant, and so their expiry
            expires_at = self.shown[expires] = clock.iso(expires) or ""
        self.chain(power, now, kind="message.held", user_id=account.user_id, ref=msg_id,
                   balance_after=power.balance,
                   detail=journal.hold_detail(quote.detail, format_amount(quote.cost),
                                              expires_at))
        self.pending[msg_id] = (
            msg_id, req.user[:64], account.user_id, power.id, now, quote.to, quote.country,
            quote.rule, quote.encoding, quote.parts, quote.price, quote.cost, "held", None,
            power.balance, *keys, expires)
        return ChargeResult("held", msg_id, req.user, quote.to, cost=quote.cost_shown,
                            parts=quote.parts, encoding=quote.encoding,
                            price=quote.price_shown, rule=quote.rule, country=quote.country,
                            balance=to_decimal(power.balance), held=quote.cost_shown,
                            expires_at=expires_at)

    def chain(self, power: HeldPower, now: int, **fields: Any) -> None:
        """An event of this account, chained to its head, which it becomes."""
        now = max(now, power.last_at)
        event = journal.event(at=now, actor=self.db.actor, power_id=power.id,
                              prev_hash=power.last_hash, **fields)
        power.last_hash, power.last_at = event[-1], now
        self.moved[power.id] = power
        self.record(event)

    def rules(self) -> Rules:
        return self.db.hold_rules

    def refill(self, account: BatchUser, power: HeldPower) -> int:
        """A threshold plan fires in the charge's own transaction, after the charge's event:
        the held row is written, the plan moves it in the database, and it is read again."""
        from smscredits.refills import fire_thresholds

        self.flush()
        balance = fire_thresholds(self.conn, account.user_id, power.balance, self.db.actor)
        row = self.conn.execute(RELOAD_POWER, {"pid": power.id}).one()
        self.powers[power.id] = HeldPower.of(power.id, row)
        return balance

    def unmetered(self, base: ChargeResult, account: BatchUser, quote: Quote, *,
                  hold: bool = False, ttl: int | None = None) -> ChargeResult:
        """A message of a user without a credits power: recorded, not charged. A hold of
        one is recorded as held, so that its settle or void finds it (and moves nothing)."""
        now = clock.now_us()
        msg_id = base.id or secrets.token_hex(8)
        self.record(journal.event(
            at=now, kind="message.unmetered", actor=self.db.actor, user_id=account.user_id,
            ref=msg_id, detail={"to": quote.to, "parts": quote.parts, "rule": quote.rule},
        ))
        status = "held" if hold else "charged"
        expires = now + (ttl if ttl is not None else self.rules().ttl_us) if hold else None
        self.remember(msg_id, account, replace(quote, cost=0), now, status, None, None, None,
                      base.user or "", expires_at=expires)
        return replace(base, status=status, id=msg_id, **{**_quoted(quote), "cost": Decimal(0)},
                       metered=False, message="user has no credits power: not metered")

    def reject(self, base: ChargeResult, account: BatchUser | None, quote: Quote | None,
               rejection: Rejected) -> ChargeResult:
        if base.id is not None:
            self.remember(base.id, account, quote, clock.now_us(), "rejected", rejection.reason,
                          None, None, base.user or "", to=base.to)
        extra = _quoted(quote) if quote is not None else {}
        return replace(base, reason=rejection.reason, message=rejection.message,
                       refusal=getattr(rejection, "numbers", None), **extra)

    def remember(self, msg_id: str, account: BatchUser | None, quote: Quote | None, at: int,
                 status: str, reason: str | None, balance: int | None,
                 keys: tuple[int, int, int] | None, name: str, to: str | None = None,
                 expires_at: int | None = None) -> None:
        self.pending[msg_id] = (
            msg_id, name[:64], account.user_id if account else None,
            account.power_id if account else None, at,
            quote.to if quote else (to or "")[:32],
            quote.country if quote else None, quote.rule if quote else None,
            quote.encoding if quote else None, quote.parts if quote else 0,
            quote.price if quote else None, quote.cost if quote else None,
            status, reason, balance, *(keys or (None, None, None)), expires_at,
        )

    def first_result(self, req: ChargeRequest, account: BatchUser | None,
                     quote: Quote | None, rejection: Rejected | None = None) -> ChargeResult:
        """The recorded outcome of an id seen before, or a conflict if it does not match."""
        key = req.id or ""
        self.replays += 1
        row = self.message(key)
        assert row is not None
        # A refusal is keyed by the user's name as requested (it touched no account: an
        # ``unknown_user`` refusal replays after the user is created); a charge also by the
        # account it debited.
        same_user = row["user_name"] == req.user and (row["status"] == "rejected" or (
            row["user_id"] == (account.user_id if account else None)))
        # A cost past the range (refused with its quote) is unlike any recorded one.
        too_dear = rejection is not None and rejection.reason == "amount_out_of_range"
        # A hold settled at other parts, or voided, no longer has the cost it was held at.
        same_cost = (quote is None and not too_dear) or row["cost"] is None or (
            quote is not None and row["cost"] == quote.cost) or (
            row["power_id"] is None and row["status"] != "rejected") or (
            req.hold and row["expires_at"] is not None  # it was a hold, and it has ended
            and row["status"] in ("settled", "voided", "refunded"))
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
            rows = list(self.pending.values())
            if any(row[-1] is not None for row in rows):
                bulk_insert(self.conn, messages, MESSAGE_COLUMNS, rows)
            else:  # no hold: no expiry to write (a NULL bound per row costs a tenth of it)
                bulk_insert(self.conn, messages, MESSAGE_COLUMNS[:-1], [row[:-1] for row in rows])
            self.written.update(self.pending)
        if self.unwritten:
            prepared_update(self.conn, messages, "id", CHANGED_COLUMNS, [
                (*(row[c] for c in CHANGED_COLUMNS), msg_id)
                for msg_id, row in self.unwritten.items()])()
            self.unwritten = {}
        if self.events:
            bulk_insert(self.conn, events, journal.EVENT_COLUMNS, self.events)
        if self.moved:
            rolled: list[HeldPower] = []
            same: list[HeldPower] = []
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
    # A charge's first result (a refunded charge was charged); a hold's as the message stands
    # now (held, settled, voided, refunded). A hold keeps its expiry instant.
    status = ("charged" if row["status"] == "refunded" and row["expires_at"] is None
              else row["status"])
    held = row["status"] == "held"
    return ChargeResult(
        status, row["id"], req.user, row["to_number"] or req.to, reason=row["reason"],
        message="already processed: first result returned, nothing charged",
        cost=None if row["cost"] is None else to_decimal(row["cost"]),
        parts=row["parts"] or None, encoding=row["encoding"],
        price=None if row["price"] is None else to_decimal(row["price"]),
        rule=row["rule"], country=row["country"],
        balance=None if row["balance_after"] is None else to_decimal(row["balance_after"]),
        metered=row["power_id"] is not None or status == "rejected", replayed=True,
        held=to_decimal(row["cost"]) if held and row["cost"] is not None else None,
        expires_at=clock.iso(row["expires_at"]) if held else None,
    )


