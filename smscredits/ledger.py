"""Users, credits powers and manual credit changes (their reads are in ``reads``).

Every change runs in one transaction with its event. Balance changes are relative,
conditional UPDATEs (``balance = balance + :d WHERE <still within overdraft>``), so
concurrent writers can neither lose an update nor overdraw.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, RowMapping, and_, delete, exc, insert, or_, select, update

from smscredits import clock, journal, limits, validate
from smscredits.amounts import MAX_MILLIS, format_amount, to_decimal
from smscredits.errors import BadInput, Conflict, InsufficientCredits

# The read side, importable without SQLAlchemy, is in reads.
from smscredits.reads import Account, Limits, get_account, no_power, show_limits, unknown_user
from smscredits.reads import dec as _dec
from smscredits.storage import queries
from smscredits.storage.engine import Db
from smscredits.storage.tables import powers, users
from smscredits.thresholds import rearm

KINDS = ("credits",)


@dataclass(frozen=True, slots=True)
class UserInfo:
    user_id: int
    user: str
    tz: str
    disabled: bool
    created_at: str | None
    balance: Decimal | None  # None: no credits power (not metered)


@dataclass(frozen=True, slots=True)
class Change:
    user: str
    amount: Decimal
    balance: Decimal
    event_id: int


def user_row(conn: Connection, name: str, *, lock: bool = False) -> RowMapping:
    row = queries.user_row(conn, name, lock=lock)
    if row is None:
        raise unknown_user(name)
    return row


def power_row(conn: Connection, user_id: int, name: str, kind: str = "credits") -> RowMapping:
    """The user's power row, held for the rest of the write transaction (Postgres; SQLite's
    write transaction holds the whole database). Writers take the power row before any plan
    row, as charges and refills do, so that none waits for another in the opposite order."""
    row = power_of(conn, user_id, kind)
    if row is None:
        raise no_power(name, kind)
    return row


def power_of(conn: Connection, user_id: int, kind: str = "credits") -> RowMapping | None:
    """The user's power row, held as ``power_row`` holds it, or None when there is none."""
    stmt = select(powers).where(powers.c.user_id == user_id, powers.c.kind == kind)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return conn.execute(stmt).mappings().first()


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadInput(f"unknown power kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


# -- users -------------------------------------------------------------------------------


def add_user(db: Db, name: str, *, tz: str | None = None) -> UserInfo:
    validate.user_name(name)
    if tz is not None:
        validate.time_zone(tz)
    now = clock.now_us()
    try:
        with db.write() as conn:
            user_id = conn.execute(
                insert(users).returning(users.c.id),
                {"name": name, "tz": tz, "disabled": False, "created_at": now},
            ).scalar_one()
            journal.record(
                conn, at=now, kind="user.added", actor=db.actor, user_id=user_id,
                detail={"name": name, "tz": tz} if tz else {"name": name},
            )
    except exc.IntegrityError:
        raise Conflict(f"user {name!r} already exists", code="user_exists") from None
    return get_user(db, name)


def get_user(db: Db, name: str) -> UserInfo:
    with db.read() as conn:
        row = user_row(conn, name)
        balance = conn.execute(
            select(powers.c.balance).where(powers.c.user_id == row["id"])
        ).scalar()
    return _user_info(row, balance, db.default_tz)


def _user_info(row: RowMapping, balance: int | None, default_tz: str) -> UserInfo:
    return UserInfo(
        user_id=row["id"],
        user=row["name"],
        tz=row["tz"] or default_tz,
        disabled=row["disabled"],
        created_at=clock.iso(row["created_at"]),
        balance=_dec(balance),
    )


def list_users(db: Db) -> list[UserInfo]:
    stmt = (
        select(users, powers.c.balance)
        .outerjoin(powers, and_(powers.c.user_id == users.c.id, powers.c.kind == "credits"))
        .order_by(users.c.name)
    )
    with db.read() as conn:
        rows = conn.execute(stmt).mappings().all()
    return [_user_info(r, r["balance"], db.default_tz) for r in rows]


def set_disabled(db: Db, name: str, disabled: bool) -> UserInfo:
    """Disable (no charges accepted; the balance is kept) or enable a user."""
    with db.write() as conn:
        row = user_row(conn, name, lock=True)
        if row["disabled"] != disabled:
            conn.execute(update(users).where(users.c.id == row["id"]).values(disabled=disabled))
            journal.record(
                conn, at=clock.now_us(), kind="user.disabled" if disabled else "user.enabled",
                actor=db.actor, user_id=row["id"],
                detail=journal.change({"disabled": disabled}, {"disabled": row["disabled"]}),
            )
    return get_user(db, name)


def rename_user(db: Db, old: str, new: str) -> UserInfo:
    """Give a user another name; its id, power, plans and journal stay its own."""
    validate.user_name(new)
    try:
        with db.write() as conn:
            row = user_row(conn, old, lock=True)
            if new == old:
                raise Conflict(f"user {new!r} already exists", code="user_exists")
            conn.execute(update(users).where(users.c.id == row["id"]).values(name=new))
            journal.record(conn, at=clock.now_us(), kind="user.renamed", actor=db.actor,
                           user_id=row["id"], detail={"name": new, "old": {"name": old}})
    except exc.IntegrityError:
        raise Conflict(f"user {new!r} already exists", code="user_exists") from None
    return get_user(db, new)


def _cancel_plans(conn: Connection, actor: str, user_id: int, note: str) -> None:
    """Cancel the user's open refill plans with its power or itself, each journaled as
    `refill cancel` journals it (the status it had is read, and held, first)."""
    from smscredits.storage.tables import refill_plans

    open_plans = refill_plans.c.user_id == user_id, refill_plans.c.status != "cancelled"
    found = conn.execute(
        select(refill_plans.c.id, refill_plans.c.status).where(*open_plans).with_for_update()
    ).all()
    conn.execute(update(refill_plans).where(*open_plans).values(status="cancelled"))
    for plan_id, status in sorted(found):
        journal.record(conn, at=clock.now_us(), kind="refill.cancelled", actor=actor,
                       user_id=user_id, ref=f"plan:{plan_id}", note=note,
                       detail={"plan": plan_id, **journal.change({"status": "cancelled"},
                                                                 {"status": status})})


def delete_user(db: Db, name: str) -> UserInfo:
    """Remove a user whose power holds no credits: its plans are cancelled and removed, its
    power deleted; the journal keeps every event under the user's id, never given again, so
    the name may be taken by a new user."""
    from smscredits.storage.tables import refill_plans

    with db.write() as conn:
        row = user_row(conn, name, lock=True)
        info = _user_info(row, None, db.default_tz)
        prow = power_of(conn, row["id"])
        if prow is not None and prow["held"]:
            raise Conflict(
                f"{name}: {format_amount(prow['held'])} credits held: settle or void the "
                f"holds first (holds list {name})", code="credits_held")
        if prow is not None and prow["balance"] != 0:
            raise Conflict(
                f"{name}: balance {format_amount(prow['balance'])}, not 0: set it to 0 "
                f"(credits set {name} 0) before deleting the user", code="balance_not_zero")
        _cancel_plans(conn, db.actor, row["id"], "user deleted")
        now = clock.now_us()
        if prow is not None:
            journal.record(conn, at=now, kind="power.deleted", actor=db.actor,
                           user_id=row["id"], power_id=prow["id"], amount=0, balance_after=0)
            conn.execute(delete(powers).where(powers.c.id == prow["id"]))
        conn.execute(delete(refill_plans).where(refill_plans.c.user_id == row["id"]))
        journal.record(conn, at=now, kind="user.deleted", actor=db.actor, user_id=row["id"],
                       detail={"name": name})
        conn.execute(delete(users).where(users.c.id == row["id"]))
    return info


def set_tz(db: Db, name: str, tz: str) -> UserInfo:
    """Move a user to another zone. The open limit windows become the new zone's current
    day, week and month, their spending recounted from the journal: every charge whose
    instant falls in the new window, less the refunded ones. Refill plans follow the new
    zone (their times are the user's). The zone the user already has changes nothing."""
    validate.time_zone(tz)
    with db.write() as conn:
        row = user_row(conn, name, lock=True)
        if row["tz"] != tz:
            _move(conn, db, row, tz)
    return get_user(db, name)


def _move(conn: Connection, db: Db, row: RowMapping, tz: str) -> None:
    prow = power_of(conn, row["id"])  # held: no charge moves the counters meanwhile
    conn.execute(update(users).where(users.c.id == row["id"]).values(tz=tz))
    now = clock.now_us()
    if prow is not None and prow["month_key"]:  # an account never charged has no windows
        conn.execute(update(powers).where(powers.c.id == prow["id"])
                     .values(**_recounted(conn, prow, tz, max(now, prow["last_at"]))))
    journal.record(conn, at=now, kind="user.tz_changed", actor=db.actor, user_id=row["id"],
                   detail={"tz": tz, "old": {"tz": row["tz"] or db.default_tz}})


def _recounted(conn: Connection, prow: RowMapping, tz: str, now: int) -> dict[str, int]:
    """The window keys and spending of an account at ``now`` in ``tz``, from its journal:
    each charge or hold counts in the windows of its instant, net of what its settle, void,
    expiry or refund moved since (``limits.moved`` on the message's own windows)."""
    import json

    from smscredits.amounts import parse_amount
    from smscredits.storage.tables import events

    keys = limits.keys_at(now, tz)
    starts = [limits.starts_at(w, k, tz) for w, k in zip(limits.WINDOWS, keys, strict=True)]
    rows = conn.execute(
        select(events.c.kind, events.c.ref, events.c.at, events.c.amount, events.c.detail)
        .where(events.c.power_id == prow["id"], events.c.at >= min(starts),
               events.c.kind.in_(_WINDOW_KINDS)).order_by(events.c.id)
    ).all()
    counted: dict[str, list[int]] = {}  # ref: [instant of its charge or hold, net amount]
    for r in rows:
        if r.kind == "message.charged":
            counted[r.ref] = [r.at, -r.amount]
        elif r.kind == "message.held":
            counted[r.ref] = [r.at, parse_amount(json.loads(r.detail)["held"])]
        elif r.ref in counted and r.kind == "message.refunded":
            counted[r.ref][1] -= r.amount
        elif r.ref in counted:  # settled, voided, expired: the difference from the hold
            counted[r.ref][1] += -(r.amount or 0) - parse_amount(json.loads(r.detail)["held"])
    values: dict[str, int] = {}
    for window, key, start in zip(limits.WINDOWS, keys, starts, strict=True):
        values[f"{window}_key"] = key
        values[f"{window}_spent"] = sum(net for at, net in counted.values() if at >= start)
    return values


# The events that move a limit window.
_WINDOW_KINDS = ("message.charged", "message.refunded", "message.held", "message.settled",
                 "message.voided", "message.expired")


# -- powers ------------------------------------------------------------------------------


def create_power(
    db: Db,
    user: str,
    kind: str = "credits",
    *,
    initial: int = 0,
    overdraft: int | None = 0,
) -> Account:
    """Put a user under credit control, with an opening balance (millis)."""
    _check_kind(kind)
    for what, value in (("initial balance", initial), ("overdraft", overdraft or 0)):
        if not -MAX_MILLIS <= value <= MAX_MILLIS or (what == "overdraft" and value < 0):
            raise BadInput(f"bad {what} {format_amount(value)}: beyond "
                           f"{format_amount(MAX_MILLIS)}", code="amount_out_of_range")
    if overdraft is not None and initial < -overdraft:
        raise BadInput(f"initial balance {format_amount(initial)} is below the overdraft")
    now = clock.now_us()
    try:
        with db.write() as conn:
            urow = user_row(conn, user)
            power_id = conn.execute(
                insert(powers).returning(powers.c.id),
                {"user_id": urow["id"], "kind": kind, "balance": initial,
                 "overdraft": overdraft, "created_at": now},
            ).scalar_one()
            journal.record(
                conn, at=now, kind="power.created", actor=db.actor, user_id=urow["id"],
                power_id=power_id, amount=initial, balance_after=initial,
                detail={"kind": kind, "overdraft": format_amount(overdraft)},
            )
    except exc.IntegrityError:
        raise Conflict(f"user {user!r} already has a {kind} power", code="power_exists") from None
    return get_account(db, user)


def set_overdraft(db: Db, user: str, overdraft: int | None) -> Account:
    if overdraft is not None and not 0 <= overdraft <= MAX_MILLIS:
        raise BadInput(f"bad overdraft {format_amount(overdraft)}: expected 0 to "
                       f"{format_amount(MAX_MILLIS)} or unlimited", code="amount_out_of_range")
    with db.write() as conn:
        urow = user_row(conn, user)
        prow = power_row(conn, urow["id"], user)
        stmt = update(powers).where(powers.c.id == prow["id"]).values(overdraft=overdraft)
        if overdraft is not None:  # what is held must stay payable
            stmt = stmt.where(powers.c.balance - powers.c.held >= -overdraft)
        if conn.execute(stmt).rowcount != 1:
            held = f" (with {format_amount(prow['held'])} held)" if prow["held"] else ""
            raise Conflict(
                f"balance of {user!r} is below -{format_amount(overdraft)}{held}: "
                "overdraft refused"
            )
        journal.record(
            conn, at=clock.now_us(), kind="power.overdraft", actor=db.actor,
            user_id=urow["id"], power_id=prow["id"],
            detail=journal.change({"overdraft": format_amount(overdraft)},
                                  {"overdraft": format_amount(prow["overdraft"])}),
        )
    return get_account(db, user)


def set_limits(db: Db, user: str, changes: dict[str, int | None]) -> Limits:
    """Set (millis) or clear (None) limits; windows not in ``changes`` are left alone."""
    if not changes:
        raise BadInput("nothing to set: give --daily, --weekly and/or --monthly")
    for window, value in changes.items():
        if value is not None and not 0 <= value <= MAX_MILLIS:
            raise BadInput(f"bad {window} limit {format_amount(value)}: expected 0 to "
                           f"{format_amount(MAX_MILLIS)} or none", code="amount_out_of_range")
    with db.write() as conn:
        urow = user_row(conn, user)
        before = power_of(conn, urow["id"])  # held: the old values journaled are replaced
        values = {limits.LIMIT_COLUMN[w]: v for w, v in changes.items()}
        row = conn.execute(
            update(powers).where(powers.c.user_id == urow["id"], powers.c.kind == "credits")
            .values(**values).returning(powers.c.id, powers.c.last_hash)
        ).first()
        if row is None:
            raise no_power(user)
        journal.record(
            conn, at=clock.now_us(), kind="limits.set", actor=db.actor, user_id=urow["id"],
            power_id=row.id, detail=journal.change(
                {w: format_amount(v) for w, v in changes.items()},
                {w: format_amount(before[limits.LIMIT_COLUMN[w]]) for w in changes}
                if before else {}),
        )
    return show_limits(db, user)


def delete_power(db: Db, user: str, kind: str = "credits", *, force: bool = False) -> Account:
    """Remove a power: the user is no longer metered. Its journal stays."""
    _check_kind(kind)
    account = get_account(db, user, kind)
    with db.write() as conn:
        prow = power_row(conn, account.user_id, user, kind)
        if prow["held"] and not force:
            raise Conflict(f"{user!r} has {format_amount(prow['held'])} credits held: settle "
                           "or void the holds first (`holds list`) or use --force",
                           code="credits_held")
        if prow["balance"] != 0 and not force:
            raise Conflict(
                f"{user!r} still has {format_amount(prow['balance'])} credits: "
                "set them to 0 first or use --force"
            )
        _cancel_plans(conn, db.actor, account.user_id, f"{kind} power deleted")
        _void_holds(conn, db.actor, prow, f"{kind} power deleted")
        journal.record(
            conn, at=clock.now_us(), kind="power.deleted", actor=db.actor,
            user_id=account.user_id, power_id=prow["id"], amount=-prow["balance"],
            balance_after=0,
        )
        conn.execute(delete(powers).where(powers.c.id == prow["id"]))
    return account


def _void_holds(conn: Connection, actor: str, prow: RowMapping, note: str) -> None:
    """The account's open holds voided (a forced delete): nothing holds on a deleted power."""
    from smscredits.storage.tables import messages

    held = conn.execute(select(messages.c.id, messages.c.cost).where(
        messages.c.status == "held", messages.c.power_id == prow["id"])
        .order_by(messages.c.id)).all()
    for msg_id, cost in held:
        journal.record(conn, at=clock.now_us(), kind="message.voided", actor=actor,
                       user_id=prow["user_id"], power_id=prow["id"],
                       balance_after=prow["balance"], ref=msg_id, note=note,
                       detail={"held": format_amount(cost)})
    if held:
        conn.execute(update(messages).where(messages.c.status == "held",
                                            messages.c.power_id == prow["id"])
                     .values(status="voided", cost=0))
        conn.execute(update(powers).where(powers.c.id == prow["id"]).values(held=0))


# -- credits -----------------------------------------------------------------------------


def add_credits(db: Db, user: str, amount: int, *, note: str | None = None) -> Change:
    """Add (or, negative, subtract) credits; a subtraction beyond the overdraft is refused."""
    if amount == 0:
        raise BadInput("bad amount '0': adding nothing changes nothing")
    if not -MAX_MILLIS <= amount <= MAX_MILLIS:
        raise BadInput(f"bad amount {format_amount(amount)}: beyond "
                       f"{format_amount(MAX_MILLIS)} either way", code="amount_out_of_range")
    validate.note(note)
    with db.write() as conn:
        urow = user_row(conn, user)
        stmt = (
            update(powers)
            .where(powers.c.user_id == urow["id"], powers.c.kind == "credits")
            .values(balance=powers.c.balance + amount)
            .returning(powers.c.id, powers.c.balance, powers.c.last_hash)
        )
        if amount < 0:
            # An unlimited overdraft still ends at the documented range.
            # What is held stays payable: a subtraction takes only what is available.
            stmt = stmt.where(
                or_(powers.c.overdraft.is_(None),
                    powers.c.balance - powers.c.held + amount >= -powers.c.overdraft),
                powers.c.balance >= -MAX_MILLIS - amount,
            )
        else:
            stmt = stmt.where(powers.c.balance <= MAX_MILLIS - amount)
        row = conn.execute(stmt).first()
        if row is None:
            prow = power_row(conn, urow["id"], user)
            after, floor = prow["balance"] + amount, prow["overdraft"]
            if amount > 0 or floor is None or after - prow["held"] >= -floor:
                raise _out_of_range(f"cannot add {format_amount(amount)} to {user!r}", after)
            held = f", held {format_amount(prow['held'])}" if prow["held"] else ""
            raise InsufficientCredits(
                f"cannot subtract {format_amount(-amount)} from {user!r}: balance "
                f"{format_amount(prow['balance'])}{held}, overdraft "
                f"{format_amount(prow['overdraft'])}"
            )
        event_id = journal.record(
            conn, at=clock.now_us(), kind="credits.added" if amount > 0 else "credits.subtracted",
            actor=db.actor, user_id=urow["id"], power_id=row.id, amount=amount,
            balance_after=row.balance, note=note,
        )
        _balance_rose(conn, urow["id"], row.balance, amount)
    return Change(user, to_decimal(amount), to_decimal(row.balance), event_id)


def set_credits(db: Db, user: str, target: int, *, note: str | None = None) -> Change:
    """Set the balance; the difference is journaled as an adjustment."""
    validate.note(note)
    if not -MAX_MILLIS <= target <= MAX_MILLIS:
        raise _out_of_range(f"cannot set {user!r} to {format_amount(target)}", target)
    with db.write() as conn:
        urow = user_row(conn, user)
        stmt = select(powers).where(powers.c.user_id == urow["id"], powers.c.kind == "credits")
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        prow = conn.execute(stmt).mappings().first()
        if prow is None:
            raise no_power(user)
        if prow["overdraft"] is not None and target - prow["held"] < -prow["overdraft"]:
            held = (f" with {format_amount(prow['held'])} held" if prow["held"] else "")
            raise InsufficientCredits(
                f"cannot set {user!r} to {format_amount(target)}{held}: below the overdraft "
                f"{format_amount(prow['overdraft'])}"
            )
        diff = target - prow["balance"]
        if not -MAX_MILLIS <= diff <= MAX_MILLIS:  # the journaled change is an amount too
            raise BadInput(
                f"cannot set {user!r} to {format_amount(target)}: the change "
                f"{format_amount(diff)} is beyond {format_amount(MAX_MILLIS)} either way; "
                "set it in two steps", code="amount_out_of_range")
        conn.execute(update(powers).where(powers.c.id == prow["id"]).values(balance=target))
        event_id = journal.record(
            conn, at=clock.now_us(), kind="credits.set", actor=db.actor, user_id=urow["id"],
            power_id=prow["id"], amount=diff,
            balance_after=target, note=note,
        )
        _balance_rose(conn, urow["id"], target, diff)
    return Change(user, to_decimal(diff), to_decimal(target), event_id)


def _out_of_range(what: str, balance: int) -> BadInput:
    bound = "below -" if balance < 0 else "above "
    return BadInput(f"{what}: the balance would be {format_amount(balance)}, "
                    f"{bound}{format_amount(MAX_MILLIS)}", code="amount_out_of_range")


def _balance_rose(conn: Connection, user_id: int, balance: int, change: int) -> None:
    """Threshold refill plans re-arm once the balance is back at or above their threshold."""
    if change > 0:

        rearm(conn, user_id, balance)
