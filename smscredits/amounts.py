"""Exact credit amounts.

Amounts are stored and computed as integers in thousandths of a credit ("millis"), so no
binary float ever touches money; they are parsed from text by hand because ``float`` accepts
``nan``/``1e400`` and ``Decimal`` accepts ``NaN``, spaces and non-ASCII digits.
"""

from __future__ import annotations

import re
from decimal import Decimal

from smscredits.errors import BadInput

SCALE = 1000
# A thousand trillion credits: far above any real balance, and sums of a few such amounts
# still fit the 64-bit integer columns.
MAX_MILLIS = 10**15 * SCALE - 1
_AMOUNT = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]{1,3}))?\Z", re.ASCII)
_UNLIMITED = {"unlimited", "none", "inf"}


def parse_amount(text: str, *, what: str = "amount", signed: bool = False) -> int:
    """Parse ``12``, ``-5``, ``0.125`` into millis; reject anything else with a named error."""
    m = _AMOUNT.match(text)
    if m is None:
        if re.fullmatch(r"[+-]?[0-9]+\.[0-9]{4,}", text, re.ASCII):
            raise BadInput(f"bad {what} {text!r}: at most 3 decimals (thousandths of a credit)")
        raise BadInput(
            f"bad {what} {text!r}: expected a decimal number with at most 3 decimals, like 12.5"
        )
    sign, whole, frac = m.groups()
    millis = int(whole) * SCALE + int((frac or "").ljust(3, "0"))
    if millis > MAX_MILLIS:
        raise BadInput(f"bad {what} {text!r}: too large (at most {format_amount(MAX_MILLIS)})",
                       code="amount_out_of_range")
    if sign == "-":
        if not signed:
            raise BadInput(f"bad {what} {text!r}: must not be negative")
        millis = -millis
    return millis


def parse_optional(text: str, *, what: str) -> int | None:
    """An amount or ``none``/``unlimited`` (meaning no bound)."""
    if text.lower() in _UNLIMITED:
        return None
    return parse_amount(text, what=what)


def to_decimal(millis: int) -> Decimal:
    """The exact Decimal of an amount, without trailing zeros or exponent (``100``, ``0.5``)."""
    return Decimal(millis) / SCALE  # exact, and with no trailing zeros to strip


def format_amount(millis: int | None) -> str:
    """Exact text of an amount: ``12.5``, ``-0.001``, ``3``; None reads ``unlimited``."""
    if millis is None:
        return "unlimited"
    sign = "-" if millis < 0 else ""
    whole, frac = divmod(abs(millis), SCALE)
    return f"{sign}{whole}.{frac:03d}".rstrip("0").rstrip(".") if frac else f"{sign}{whole}"
