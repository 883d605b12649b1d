"""What a charge is asked and what it answers: requests, results, their checks and a
stream's summary. No database here: gateway code builds these and reads them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from smscredits.errors import (
    BadInput,
    Exit,
)
from smscredits.parts import Parts, count_parts
from smscredits.pricing import MAX_PARTS, given_parts
from smscredits.validate import is_message_id

MAX_TTL_US = 366 * 86400 * 1_000_000  # a hold's longest time to live (holds.MAX_TTL_S)
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
    "unknown_message": Exit.NOT_FOUND, "not_held": Exit.CONFLICT, "still_held": Exit.CONFLICT,
    "already_settled": Exit.CONFLICT, "already_refunded": Exit.CONFLICT,
    "not_metered": Exit.CONFLICT, "no_power": Exit.CONFLICT, "unknown_status": Exit.USAGE,
}
# The ops of a stream line: ``charge`` (the default) and ``hold`` are ChargeRequests, the
# others MessageOps.
OPS = ("charge", "hold", "settle", "void", "refund", "dlr")
# A result's status: charged, rejected or error for a charge; held, settled, voided,
# refunded, or ignored (a delivery report that changes nothing) for the others.
DONE = frozenset({"charged", "held", "settled", "voided", "refunded", "ignored"})


@dataclass(slots=True)  # not frozen: made once per line, and frozen costs 4x as much
class ChargeRequest:
    """One message to charge, or with ``hold`` to hold until it is settled or voided (see
    ``holds``); ``ttl``: the hold's time to live in microseconds (default: ``hold_ttl``)."""

    user: str
    to: str
    text: str | None = None
    parts: int | None = None
    id: str | None = None
    hold: bool = False
    ttl: int | None = None


@dataclass(slots=True)
class MessageOp:
    """An act on the message recorded under ``id``: ``settle`` (``parts``: the parts the
    SMSC actually sent, if they differ), ``void``, ``refund``, ``dlr`` (``status`` as
    ``source`` reports it) or ``expire`` (what ``holds expire`` does to a hold that is due).
    ``user``, when given, must be the message's; ``note`` goes to the event. ``before``: an
    expire also ends a hold made before this instant (µs), whatever its expiry."""

    op: str
    id: str
    user: str | None = None
    parts: int | None = None
    status: str | None = None
    source: str | None = None
    note: str | None = None
    before: int | None = None
    # A void of a settled message is a refund (``void_settled``) only where the caller may
    # refund: ``serve`` clears it for a gateway's token.
    refunds: bool = True


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
    # A hold's: the amount held (a settle's and a void's: the amount the hold was), and
    # until when it holds.
    held: Decimal | None = None
    expires_at: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RESULT_FIELDS}

    @property
    def exit_code(self) -> int:
        return 0 if self.status in DONE else int(EXIT_FOR.get(self.reason or "", 1))


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
            and (req.ttl is None or (type(req.ttl) is int and 0 < req.ttl <= MAX_TTL_US))
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
            or (None if req.ttl is None or (type(req.ttl) is int and 0 < req.ttl <= MAX_TTL_US)
                else f"bad ttl {str(req.ttl)[:40]}: a whole number of microseconds, up to 366 "
                     "days")
            or (None if msg_id is None or (type(msg_id) is str and is_message_id(msg_id))
                else f"bad message id {_shown(msg_id)}: 1-128 printable ASCII characters, "
                     "no spaces"))


def fit_to_look_up(reqs: list[ChargeRequest]) -> list[ChargeRequest]:
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




def parts_of(req: ChargeRequest) -> Parts:
    if (req.text is None) == (req.parts is None):
        raise BadInput("give either a text or a number of parts")
    if req.text is None:
        return given_parts(req.parts or 0)
    counted = count_parts(req.text)
    if counted.parts > MAX_PARTS:  # a concatenated message has at most 255 parts
        raise BadInput(f"text too long: {counted.parts} parts, at most {MAX_PARTS}")
    return counted


@dataclass
class BatchSummary:
    """What a stream of charges did, counted apart: new charges, replays of earlier results
    (a rerun of a file charges nothing), refusals by reason and errors (bad lines, conflicts)
    by reason. ``cost`` (millis) is what this run charged (settles included, refunds taken
    off), replays excluded."""

    lines: int = 0
    charged: int = 0
    # Holds and the acts on them (a void of a settled message counts as refunded).
    held: int = 0
    settled: int = 0
    voided: int = 0
    refunded: int = 0
    ignored: int = 0
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
            elif r.status in _ACTED:
                setattr(self, r.status, getattr(self, r.status) + 1)
                if r.status == "settled" and r.cost is not None:
                    spent += r.cost
                elif r.status == "refunded" and r.cost is not None:
                    spent -= r.cost
            elif r.status == "rejected":
                self.rejected += 1
                _count(self.rejected_by_reason, r.reason)
            else:
                self.errors += 1
                _count(self.errors_by_reason, r.reason)
        self.lines += len(results)
        self.cost += int(spent * 1000)


_ACTED = frozenset({"held", "settled", "voided", "refunded", "ignored"})


def _count(counts: dict[str, int], reason: str | None) -> None:
    key = reason or "error"
    counts[key] = counts.get(key, 0) + 1


