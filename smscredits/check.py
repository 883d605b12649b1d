"""The monitoring check: which users are low on credits or close to a spending limit.

Meant for cron, Nagios or Icinga: every active (not disabled) credits account is compared
with a threshold of available credits (one for all, or per user) and, for each limit window
that has a limit, with the share of the limit still left. An account with an unlimited
overdraft is never low on credits; its limits are still checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from smscredits import clock, reads
from smscredits.amounts import format_amount, to_decimal
from smscredits.errors import BadInput, NotFound

# What the limit findings say, by window.
_LIMIT_NAME = {"day": "daily", "week": "weekly", "month": "monthly"}


@dataclass(frozen=True, slots=True)
class Finding:
    user: str
    check: str  # available | day | week | month
    message: str
    value: Decimal  # credits available, or credits left in the window
    threshold: Decimal  # the threshold of available credits, or the window's limit
    resets_at: str | None  # a window's end (UTC), for limit findings


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``below``: millis of available credits under which a user is low (None: out of
    credits, at 0 or less); ``per_user`` overrides it; ``limit_left``: the percentage of a
    limit under which its window is nearly used (None: only a window with nothing left)."""

    below: int | None = None
    per_user: dict[str, int] | None = None
    limit_left: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CheckReport:
    checked: int
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings


def parse_percent(text: str) -> Decimal:
    """``10`` or ``12.5`` (a percentage of a limit, 0 to 100)."""
    cleaned = text.strip().removesuffix("%")
    if not cleaned.replace(".", "", 1).isdigit() or not cleaned.isascii():
        raise BadInput(f"bad --limit-left {text!r}: expected a percentage from 0 to 100")
    value = Decimal(cleaned)
    if value > 100:
        raise BadInput(f"bad --limit-left {text!r}: expected a percentage from 0 to 100")
    return value


def check(db: reads.Source, thresholds: Thresholds) -> CheckReport:
    findings: list[Finding] = []
    checked = 0
    accounts = reads.accounts_with_windows(db)
    unknown = sorted(set(thresholds.per_user or ()) - {a.user for a, _ in accounts})
    if unknown:
        raise NotFound(f"--below for {unknown[0]!r}: no such user with a credits power",
                       code="unknown_user")
    for account, windows in accounts:
        if account.disabled:
            continue
        checked += 1
        low = _low_credits(account, thresholds)
        if low is not None:
            findings.append(low)
        findings.extend(_near_limits(account, windows, thresholds.limit_left))
    return CheckReport(checked, findings)


def _low_credits(account: reads.Account, t: Thresholds) -> Finding | None:
    if account.available is None:  # unlimited overdraft: never out of credits
        return None
    below = (t.per_user or {}).get(account.user, t.below)
    if below is None:
        if account.available > 0:
            return None
        return Finding(account.user, "available", f"{account.user}: no credits available "
                       f"(balance {account.balance})", account.available, Decimal(0), None)
    threshold = to_decimal(below)
    if account.available >= threshold:
        return None
    return Finding(account.user, "available", f"{account.user}: {account.available} credits "
                   f"available, below {format_amount(below)}", account.available, threshold,
                   None)


def _near_limits(account: reads.Account, windows: list[reads.Window],
                 limit_left: Decimal | None) -> list[Finding]:
    found = []
    for w in windows:
        if w.limit is None or w.remaining is None:
            continue
        nearly = (w.remaining <= 0 if limit_left is None
                  else w.remaining * 100 < w.limit * limit_left)
        if not nearly:
            continue
        left = Decimal(0) if w.limit == 0 else (w.remaining * 100 / w.limit).quantize(
            Decimal(1))
        found.append(Finding(
            account.user, w.window,
            f"{account.user}: {_LIMIT_NAME[w.window]} limit {w.spent} of {w.limit} spent "
            f"({left}% left), resets {clock.local_text(w.resets_at, account.tz)}",
            w.remaining, w.limit, w.resets_at))
    return found
