"""Charging messages: one debit per message, within balance, overdraft and every limit.

The hot path is SQLAlchemy Core on one connection. Each message is one conditional UPDATE
of the power row, which checks balance, overdraft and all three limit windows and moves the
window counters at once (``RETURNING`` the new balance); its message row and event are
collected and inserted with one ``executemany`` per batch, inside the batch's transaction.
A batch commits before any of its results is reported, so a reported charge is durable and
an interrupted batch leaves nothing behind.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exc, or_, select, text, update

from smscredits import clock, journal
from smscredits.amounts import to_decimal
from smscredits.errors import (
    BadInput,
    Conflict,
    Exit,
    NotFound,
)
from smscredits.limits import LIMIT_COLUMN, REASON, WINDOWS, spent_now, window_keys
from smscredits.parts import Parts, count_parts
from smscredits.pricing import PriceBook, Quote, Rejected, given_parts
from smscredits.storage.engine import Db
from smscredits.storage.hot import HotStatement, insert_rows
from smscredits.storage.tables import events, messages, powers, users

# Exit code of a single charge refused for each reason.
EXIT_FOR = {
    "insufficient_credits": Exit.INSUFFICIENT,
    "daily_limit": Exit.LIMIT, "weekly_limit": Exit.LIMIT, "monthly_limit": Exit.LIMIT,
    "no_price": Exit.NOT_FOUND, "unknown_user": Exit.NOT_FOUND,
    "invalid_number": Exit.USAGE, "bad_input": Exit.USAGE,
    "user_disabled": Exit.CONFLICT, "conflict": Exit.CONFLICT,
}


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    user: str
    to: str
    text: str | None = None
    parts: int | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
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
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RESULT_FIELDS}

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "charged" else int(EXIT_FOR.get(self.reason or "", 1))


_RESULT_FIELDS = tuple(f.name for f in fields(ChargeResult))


@dataclass
class _Account:
    user_id: int
    disabled: bool
    tz: str
    power_id: int | None


# One statement checks balance, overdraft and all three windows and debits them all.
_window_sets = {
    f"{w}_spent": text(f"CASE WHEN {w}_key = :{w}_key THEN {w}_spent + :cost ELSE :cost END")
    for w in WINDOWS
}
_window_checks = [
    text(f"({LIMIT_COLUMN[w]} IS NULL OR "
         f"(CASE WHEN {w}_key = :{w}_key THEN {w}_spent ELSE 0 END) + :cost <= {LIMIT_COLUMN[w]})")
    for w in WINDOWS
]
DEBIT = (
    update(powers)
    .where(
        powers.c.id == bindparam("pid"),
        or_(powers.c.overdraft.is_(None),
            powers.c.balance - bindparam("cost") >= -powers.c.overdraft),
        *_window_checks,
    )
    .values(
        balance=powers.c.balance - bindparam("cost"),
        day_key=bindparam("day_key"), week_key=bindparam("week_key"),
        month_key=bindparam("month_key"),
        **_window_sets,
    )
    .returning(powers.c.balance, powers.c.last_hash, powers.c.refill_below)
)
ACCOUNTS = (
    select(users.c.name, users.c.id, users.c.disabled, users.c.tz,
           powers.c.id.label("power_id"))
    .outerjoin(powers, and_(powers.c.user_id == users.c.id, powers.c.kind == "credits"))
    .where(users.c.name.in_(bindparam("names", expanding=True)))
)
INSERT_MESSAGE = insert_rows(messages, [
    "id", "user_name", "user_id", "power_id", "at", "to_number", "country", "rule", "encoding",
    "parts", "price", "cost", "status", "reason", "balance_after", "day_key", "week_key",
    "month_key",
])
INSERT_EVENT = insert_rows(events, [
    "at", "user_id", "power_id", "kind", "amount", "balance_after", "ref", "note", "actor",
    "detail", "hash",
])
LOCK_POWERS = (
    select(powers.c.id, powers.c.refill_below)
    .where(powers.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(powers.c.id).with_for_update()
)
KNOWN = select(messages).where(messages.c.id.in_(bindparam("ids", expanding=True)))
SET_HASH = update(powers).where(powers.c.id == bindparam("pid")).values(
    last_hash=bindparam("h")
)


def _chunks(items: list[Any], size: int = 500) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def parts_of(req: ChargeRequest) -> Parts:
    if (req.text is None) == (req.parts is None):
        raise BadInput("give either a text or a number of parts")
    return count_parts(req.text) if req.text is not None else given_parts(req.parts or 0)


class _Batch:
    """The state of one transaction's worth of charges."""

    def __init__(self, conn: Connection, db: Db) -> None:
        self.conn, self.db = conn, db
        self.book = PriceBook.load(conn)
        self.accounts: dict[str, _Account | None] = {}
        self.hashes: dict[int, str | None] = {}
        self.pending: dict[str, dict[str, Any]] = {}  # message rows by id, not yet written
        self.written: dict[str, dict[str, Any]] = {}  # ... and those flushed in this batch
        self.known: dict[str, dict[str, Any]] = {}  # ... and those recorded before
        self.debit_sql = HotStatement(conn, DEBIT)
        self.pipeline_ok = True
        self.events: list[dict[str, Any]] = []

    def prefetch(self, reqs: list[ChargeRequest]) -> None:
        """Accounts and already-recorded message ids of a whole batch, in a few queries."""
        names = sorted({r.user for r in reqs})
        ids = sorted({r.id for r in reqs if r.id is not None})
        for chunk in _chunks(names):
            for row in self.conn.execute(ACCOUNTS, {"names": chunk}):
                self.accounts[row.name] = _Account(
                    row.id, row.disabled, row.tz or self.db.default_tz, row.power_id
                )
        for name in names:
            self.accounts.setdefault(name, None)
        if self.conn.dialect.name == "postgresql":
            # Lock the batch's accounts up front, in one fixed order: two batches that share
            # accounts then queue instead of deadlocking on rows taken in different orders.
            power_ids = sorted({a.power_id for a in self.accounts.values()
                                if a is not None and a.power_id is not None})
            for chunk in _chunks(power_ids):
                for row in self.conn.execute(LOCK_POWERS, {"ids": chunk}):
                    # A threshold plan may fire mid-batch: keep such batches sequential.
                    self.pipeline_ok &= row.refill_below is None
        for chunk in _chunks(ids):
            for row in self.conn.execute(KNOWN, {"ids": chunk}).mappings():
                self.known[row["id"]] = dict(row)

    def account(self, name: str) -> _Account | None:
        if name not in self.accounts:
            self.prefetch([ChargeRequest(name, "")])
        return self.accounts[name]

    def charge(self, req: ChargeRequest) -> ChargeResult:
        prepared = self.prepare(req)
        if isinstance(prepared, ChargeResult):
            return prepared
        return self.debit(*prepared, self.debit_sql.first(prepared[3]))

    def charge_all(self, reqs: list[ChargeRequest]) -> list[ChargeResult]:
        """Charge a batch. On Postgres the debits go out in one pipeline (one round trip for
        the batch instead of one per message); the accounts are locked already, so the
        results are those of running them one by one."""
        if not (self.conn.dialect.name == "postgresql" and self.pipeline_ok):
            return [self.charge(r) for r in reqs]
        results: list[ChargeResult | None] = [None] * len(reqs)
        jobs: list[tuple[int, tuple[Any, ...]]] = []
        later: list[int] = []
        seen: set[str] = set()
        for i, req in enumerate(reqs):
            if req.id is not None and req.id in seen:
                later.append(i)  # a repeat within the batch replays what the first decided
                continue
            if req.id is not None:
                seen.add(req.id)
            prepared = self.prepare(req)
            if isinstance(prepared, ChargeResult):
                results[i] = prepared
            else:
                jobs.append((i, prepared))
        rows = self.debit_sql.pipelined([job[3] for _, job in jobs])
        for (i, job), row in zip(jobs, rows, strict=True):
            results[i] = self.debit(*job, row)
        for i in later:
            results[i] = self.charge(reqs[i])
        return results  # type: ignore[return-value]

    def prepare(self, req: ChargeRequest) -> ChargeResult | tuple[Any, ...]:
        """Everything before the debit: a final result, or what the debit needs."""
        base = ChargeResult("rejected", req.id, req.user, req.to)
        try:
            quote: Quote | None = self.book.quote(req.to, parts_of(req))
            rejection = None
        except Rejected as r:
            quote, rejection = None, r
        except BadInput as e:
            return replace(base, status="error", reason="bad_input", message=e.message)
        account = self.account(req.user)
        if req.id is not None:
            first = self.first_result(req, account, quote)
            if first is not None:
                return first
        # Precedence (documented): number, price, then the user.
        if rejection is None and account is None:
            rejection = Rejected("unknown_user", f"unknown user {req.user!r}")
        elif rejection is None and account.disabled:
            rejection = Rejected("user_disabled", f"user {req.user!r} is disabled")
        if rejection is not None or quote is None or account is None:
            assert rejection is not None
            return self.reject(base, account, quote, rejection)
        if account.power_id is None:
            return self.unmetered(base, account, quote)
        now = clock.now_us()
        day, week, month = window_keys(now, account.tz)
        params = {"pid": account.power_id, "cost": quote.cost, "day_key": day,
                  "week_key": week, "month_key": month}
        return base, account, quote, params, now

    def debit(self, base: ChargeResult, account: _Account, quote: Quote,
              params: dict[str, Any], now: int, row: tuple[Any, ...] | None) -> ChargeResult:
        """The debit's outcome: ``row`` is what the conditional UPDATE returned."""
        day, week, month = params["day_key"], params["week_key"], params["month_key"]
        while row is None:
            # Postgres, READ COMMITTED: a top-up may have committed since the UPDATE looked.
            # why_refused locks the row, so a second UPDATE sees what it saw.
            refusal = self.why_refused(params)
            if refusal is not None:
                return self.reject(base, account, quote, refusal)
            row = self.debit_sql.first(params)
        msg_id = base.id or secrets.token_hex(8)
        assert account.power_id is not None
        balance, last_hash, refill_below = row
        prev = self.hashes.get(account.power_id, last_hash)
        event = journal.build(
            at=now, kind="message.charged", actor=self.db.actor, user_id=account.user_id,
            power_id=account.power_id, amount=-quote.cost, balance_after=balance,
            ref=msg_id, prev_hash=prev,
            detail={"to": quote.to, "parts": quote.parts, "rule": quote.rule},
        )
        self.hashes[account.power_id] = event["hash"]
        self.events.append(event)
        if refill_below is not None and balance < refill_below:
            balance = self.refill(account, balance)
        # Recorded with the balance the caller is told, so that a replay tells the same.
        self.remember(msg_id, account, quote, now, "charged", None, balance, (day, week, month),
                      base.user or "")
        return ChargeResult("charged", msg_id, base.user, quote.to, cost=to_decimal(quote.cost),
                            parts=quote.parts, encoding=quote.encoding,
                            price=to_decimal(quote.price), rule=quote.rule,
                            country=quote.country, balance=to_decimal(balance))

    def refill(self, account: _Account, balance: int) -> int:
        """A threshold plan fires in the charge's own transaction, after the charge's event."""
        from smscredits.refills import fire_thresholds

        self.flush()
        assert account.power_id is not None
        self.hashes.pop(account.power_id, None)  # the power row's last_hash is current again
        return fire_thresholds(self.conn, account.user_id, balance, self.db.actor)

    def why_refused(self, params: dict[str, Any]) -> Rejected | None:
        """Why the debit was refused; None if, with the row now locked, nothing stops it."""
        stmt = select(powers).where(powers.c.id == params["pid"])
        if self.conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).mappings().one()
        cost = params["cost"]
        if row["overdraft"] is not None and row["balance"] - cost < -row["overdraft"]:
            return Rejected("insufficient_credits", "insufficient credits")
        for window in WINDOWS:
            limit = row[LIMIT_COLUMN[window]]
            if limit is not None and spent_now(row, window, params[f"{window}_key"]) + cost > limit:
                return Rejected(REASON[window], f"{REASON[window].replace('_', ' ')} reached")
        return None

    def unmetered(self, base: ChargeResult, account: _Account, quote: Quote) -> ChargeResult:
        now = clock.now_us()
        msg_id = base.id or secrets.token_hex(8)
        self.events.append(journal.build(
            at=now, kind="message.unmetered", actor=self.db.actor, user_id=account.user_id,
            ref=msg_id, detail={"to": quote.to, "parts": quote.parts, "rule": quote.rule},
        ))
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
        return replace(base, reason=rejection.reason, message=rejection.message, **extra)

    def remember(self, msg_id: str, account: _Account | None, quote: Quote | None, at: int,
                 status: str, reason: str | None, balance: int | None,
                 keys: tuple[int, int, int] | None, name: str, to: str | None = None) -> None:
        self.pending[msg_id] = {
            "id": msg_id, "user_name": name[:64], "user_id": account.user_id if account else None,
            "power_id": account.power_id if account else None, "at": at,
            "to_number": quote.to if quote else (to or "")[:32],
            "country": quote.country if quote else None,
            "rule": quote.rule if quote else None,
            "encoding": quote.encoding if quote else None,
            "parts": quote.parts if quote else 0,
            "price": quote.price if quote else None, "cost": quote.cost if quote else None,
            "status": status, "reason": reason, "balance_after": balance,
            "day_key": keys[0] if keys else None, "week_key": keys[1] if keys else None,
            "month_key": keys[2] if keys else None,
        }

    def first_result(self, req: ChargeRequest, account: _Account | None,
                     quote: Quote | None) -> ChargeResult | None:
        """The recorded outcome of an id seen before, or a conflict if it does not match."""
        key = req.id or ""
        row = self.pending.get(key) or self.written.get(key) or self.known.get(key)
        if row is None:
            return None
        same_user = row["user_name"] == req.user and row["user_id"] == (
            account.user_id if account else None)
        same_cost = quote is None or row["cost"] is None or row["cost"] == quote.cost or (
            row["power_id"] is None and row["status"] != "rejected")
        if not (same_user and same_cost):
            return ChargeResult(
                "error", req.id, req.user, req.to, reason="conflict",
                message=f"message id {req.id!r} was already used for another user or cost",
            )
        return _from_row(row, req)

    def flush(self) -> None:
        """Write the collected message rows, events and chain heads."""
        if self.pending:
            HotStatement(self.conn, INSERT_MESSAGE).many(list(self.pending.values()))
            self.written.update(self.pending)
        if self.events:
            HotStatement(self.conn, INSERT_EVENT).many(self.events)
        if self.hashes:
            self.conn.execute(SET_HASH, [{"pid": p, "h": h} for p, h in self.hashes.items()])
        self.pending, self.events, self.hashes = {}, [], {}


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


class Charger:
    """Charges messages against one database; gateway code keeps one and calls it."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def charge(self, req: ChargeRequest) -> ChargeResult:
        return self.charge_batch([req])[0]

    def charge_batch(self, reqs: Iterable[ChargeRequest]) -> list[ChargeResult]:
        """Charge several messages in one transaction (all results durable on return)."""
        reqs = list(reqs)
        for attempt in range(5):
            try:
                with self.db.write() as conn:
                    batch = _Batch(conn, self.db)
                    batch.prefetch(reqs)
                    results = batch.charge_all(reqs)
                    batch.flush()
                return results
            except exc.IntegrityError:
                # Another process recorded one of these message ids first (Postgres):
                # redo the batch, which now replays that id's first result.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class BatchSummary:
    lines: int = 0
    malformed: int = 0
    charged: int = 0
    rejected: int = 0
    errors: int = 0
    cost: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, r: ChargeResult) -> None:
        self.lines += 1
        if r.status == "charged":
            self.charged += 1
            if not r.replayed and r.cost is not None:
                self.cost += int(r.cost * 1000)
        elif r.status == "rejected":
            self.rejected += 1
        else:
            self.errors += 1
            self.malformed += r.reason == "bad_input"
        if r.reason:
            self.reasons[r.reason] = self.reasons.get(r.reason, 0) + 1


# -- refunds -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    user: str
    amount: Decimal
    balance: Decimal
    event_id: int


def refund(db: Db, msg_id: str, *, note: str | None = None) -> Refund:
    """Give a charged message's credits back, once, and free the windows it was charged in."""
    with db.write() as conn:
        stmt = select(messages, users.c.name).outerjoin(users, users.c.id == messages.c.user_id)
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
        for window in WINDOWS:
            col = powers.c[f"{window}_spent"]
            key_col = powers.c[f"{window}_key"]
            # Only the window the message was charged in gets its room back.
            values[f"{window}_spent"] = text(
                f"CASE WHEN {key_col.name} = :{window}_mkey THEN {col.name} - :refund "
                f"ELSE {col.name} END"
            ).bindparams(**{f"{window}_mkey": msg[f"{window}_key"], "refund": cost})
        row = conn.execute(
            update(powers).where(powers.c.id == msg["power_id"]).values(**values)
            .returning(powers.c.balance, powers.c.last_hash)
        ).first()
        if row is None:
            raise Conflict(f"the credits power of message {msg_id!r} was deleted",
                           code="no_power")
        from smscredits.refills import rearm

        rearm(conn, msg["user_id"], row.balance)
        conn.execute(update(messages).where(messages.c.id == msg_id).values(status="refunded"))
        event_id = journal.record(
            conn, at=clock.now_us(), kind="message.refunded", actor=db.actor,
            user_id=msg["user_id"], power_id=msg["power_id"], prev_hash=row.last_hash,
            amount=cost, balance_after=row.balance, ref=msg_id, note=note,
        )
    return Refund(msg_id, msg["name"], to_decimal(cost), to_decimal(row.balance), event_id)
