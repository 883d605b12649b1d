"""The charge rule, applied in memory to a held power row: balance, overdraft and the
limit windows (``limits``) decide, and a refusal says why with its numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smscredits import clock, limits
from smscredits.amounts import MAX_MILLIS, format_amount, to_decimal
from smscredits.limits import REASON, WINDOWS, Keys, Spent
from smscredits.pricing import Rejected


@dataclass
class BatchUser:
    user_id: int
    disabled: bool
    tz: str
    power_id: int | None


@dataclass(slots=True)
class HeldPower:
    """A held power row: the batch checks and debits it in memory, then writes it once."""

    id: int
    balance: int
    held: int  # reserved by open holds: what can be taken is balance - held + overdraft
    overdraft: int | None  # None: unlimited
    limits: tuple[int | None, int | None, int | None]  # day, week, month
    keys: Keys  # the windows the counters are for
    spent: Spent
    last_hash: str | None
    refill_below: int | None
    last_at: int  # the instant of the account's latest event
    # A window key or the held amount moved since the row was last written: the whole
    # state is written back (``written``), else only what a charge moves (``spent_written``).
    rolled: bool = False

    @classmethod
    def of(cls, pid: int, row: Any) -> HeldPower:
        (balance, held, overdraft, day, week, month, dk, ds, wk, ws, mk, ms, last_hash,
         refill_below, last_at) = row
        return cls(pid, balance, held, overdraft, (day, week, month), (dk, wk, mk), (ds, ws, ms),
                   last_hash, refill_below, last_at)

    def take(self, cost: int, keys: Keys, *, hold: bool = False) -> Rejected | None:
        """Debit ``cost`` (or with ``hold`` reserve it) in these windows if balance, holds,
        overdraft and every limit allow it; else say why not and change nothing.

        No overdraft and no limit lets an amount leave the documented range: an unlimited
        overdraft ends at -MAX_MILLIS and a window without a limit at MAX_MILLIS, so each
        bound is still one comparison."""
        after, floor = self.balance - self.held - cost, self.overdraft
        if after < (-floor if floor is not None else -MAX_MILLIS):
            return REFUSED[0] if floor is not None else out_of_range("balance", after)
        spent = limits.charged(self.keys, self.spent, keys, cost)
        if not limits.within(self.limits, spent):
            return self.window_refusal(spent)
        if self.keys != keys:
            self.keys, self.rolled = keys, True
        if hold:
            self.held += cost
            self.rolled = True
        else:
            self.balance -= cost
        self.spent = spent
        return None

    def release(self, held: int, cost: int, keys: Keys) -> None:
        """End a hold of ``held`` counted in the windows ``keys``, taking ``cost`` from the
        balance (0: a void). The windows move by the difference while they are current."""
        self.held -= held
        self.rolled = True
        self.balance -= cost
        self.spent = limits.moved(self.keys, self.spent, keys, cost - held)

    def can_take_more(self, extra: int, keys: Keys, now: Keys) -> bool:
        """Whether ``extra`` beyond a hold can be taken (a settle for more parts than held):
        balance and overdraft allow it, and so does the limit of each window current at
        ``now`` that the hold was counted in (the others do not count it)."""
        floor = self.overdraft
        if self.balance - self.held - extra < (-floor if floor is not None else -MAX_MILLIS):
            return False
        return limits.room_for(self.limits, limits.spent_in(self.keys, self.spent, now), now,
                               keys, extra)

    def give_back(self, cost: int, keys: Keys) -> None:
        """A refund of ``cost`` charged in the windows ``keys``."""
        self.balance += cost
        self.spent = limits.moved(self.keys, self.spent, keys, -cost)

    def window_refusal(self, spent: Spent) -> Rejected:
        """Why a window refuses a charge: a limit it would pass (day, week, month), else a
        counter past the documented range (the rare way out of ``take``)."""
        window = limits.passed(self.limits, spent)
        if window is not None:
            return REFUSED[1 + WINDOWS.index(window)]
        for window, total in zip(WINDOWS, spent, strict=True):
            if total > MAX_MILLIS:
                return out_of_range(f"{window}'s spending", total)
        raise AssertionError("no window refuses this charge")  # pragma: no cover

    def written(self) -> tuple[Any, ...]:
        """``WRITTEN_COLUMNS`` and then the power id."""
        (dk, wk, mk), (ds, ws, ms) = self.keys, self.spent
        return (self.balance, self.held, dk, ds, wk, ws, mk, ms, self.last_hash, self.last_at,
                self.id)

    def spent_written(self) -> tuple[Any, ...]:
        """``SPENT_COLUMNS`` and then the power id: enough while nothing ``rolled``."""
        ds, ws, ms = self.spent
        return (self.balance, ds, ws, ms, self.last_hash, self.last_at, self.id)


# Why a take is refused: insufficient credits, then each window's limit, in this order.
REFUSED = (Rejected("insufficient_credits", "insufficient credits"),
           *(Rejected(REASON[w], f"{REASON[w].replace('_', ' ')} reached") for w in WINDOWS))


class Refused(Rejected):
    """A refusal by the balance or a limit, with the numbers that decided it: ``cost``,
    ``available``, ``balance``, ``overdraft``; or ``window``, ``limit``, ``spent``, ``cost``,
    ``resets_at`` (ISO UTC)."""

    def __init__(self, reason: str, message: str, numbers: dict[str, Any]) -> None:
        super().__init__(reason, message)
        self.numbers = numbers


def with_numbers(refused: Rejected, power: HeldPower, cost: int, keys: Keys,
                 tz: str) -> Rejected:
    """``take``'s refusal with its numbers, made only when a charge is refused (the charged
    path pays nothing for it)."""
    if refused is REFUSED[0]:
        floor = power.overdraft or 0
        numbers: dict[str, Any] = {
            "cost": to_decimal(cost),
            "available": to_decimal(power.balance - power.held + floor),
            "balance": to_decimal(power.balance), "overdraft": to_decimal(floor)}
        named = ""
        if power.held:  # named only where holds are used: the other refusals stay as they were
            numbers["held"] = to_decimal(power.held)
            named = f", held {numbers['held']}"
        return Refused(refused.reason, "insufficient credits: cost {cost}, available "
                       "{available} (balance {balance}{named}, overdraft {overdraft})".format(
                           named=named, **numbers), numbers)
    if refused not in REFUSED:
        return refused  # a counter past the documented range: its message says it all
    i = REFUSED.index(refused) - 1
    window, limit = WINDOWS[i], power.limits[i]
    resets_at = clock.iso(limits.ends_at(window, keys[i], tz)) or ""
    numbers = {"window": window, "limit": to_decimal(limit or 0),
               "spent": to_decimal(limits.spent_in(power.keys, power.spent, keys)[i]),
               "cost": to_decimal(cost), "resets_at": resets_at}
    return Refused(refused.reason, "{label} reached: limit {limit}, spent {spent}, cost {cost}, "
                   "resets {resets}".format(label=REASON[window].replace("_", " "),
                                            resets=clock.local_text(resets_at, tz), **numbers),
                   numbers)


def out_of_range(what: str, amount: int) -> Rejected:
    """A charge that would take an amount past the documented range (rare: made each time)."""
    bound = -MAX_MILLIS if amount < 0 else MAX_MILLIS
    return Rejected("amount_out_of_range",
                    f"the {what} after this charge, {format_amount(amount)}, would be "
                    f"{'below' if amount < 0 else 'above'} {format_amount(bound)}")


