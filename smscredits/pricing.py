"""Prices per message part by destination: longest E.164 prefix, then country, then default.

A destination with no matching price and no default is ``no_price`` (never free); a number
that ``phonenumbers`` finds invalid is ``invalid_number``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, delete, select

from smscredits import clock, journal
from smscredits.amounts import MAX_MILLIS, format_amount, parse_amount, to_decimal
from smscredits.errors import BadInput, NotFound
from smscredits.parts import Parts
from smscredits.storage.engine import Db
from smscredits.storage.tables import prices

if TYPE_CHECKING:  # imported where a number is parsed: off the start-up path
    from phonenumbers import PhoneNumber

_PREFIX = re.compile(r"\+[0-9]{1,15}\Z", re.ASCII)
_COUNTRY = re.compile(r"[A-Za-z]{2}\Z", re.ASCII)
_PUNCTUATION = re.compile(r"[ ().-]")
_PLAIN_E164 = re.compile(r"\+[1-9][0-9]{5,14}\Z", re.ASCII)
_NUMBER = re.compile(r"(\+|00)?[0-9][0-9 ().-]{2,30}\Z", re.ASCII)
MAX_PARTS = 255
_QUOTES_KEPT = 65_536


class Rejected(Exception):
    """A charge that cannot go ahead, with its reason code (``no_price``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Destination:
    number: str  # E.164
    country: str | None


@dataclass(frozen=True, slots=True)
class Quote:
    to: str
    country: str | None
    rule: str  # "+3630", "HU" or "default"
    price: int  # millis per part
    encoding: str | None
    parts: int
    cost: int  # millis
    # Made once per cached quote, not once per charge: the charge's event detail and the
    # Decimals its result shows.
    detail: str
    cost_shown: Decimal
    price_shown: Decimal


@lru_cache(maxsize=65_536)
def destination(text: str) -> Destination:
    """Parse a number (``+36301234567``, ``0036...``, or international digits) to E.164."""
    import phonenumbers

    if not _NUMBER.match(text):
        raise _invalid_number(text)
    digits = _PUNCTUATION.sub("", text)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif not digits.startswith("+"):
        digits = "+" + digits
    parsed = _e164_fast(digits)
    if parsed is None:
        try:
            parsed = phonenumbers.parse(digits, None)
        except phonenumbers.NumberParseException:
            raise _invalid_number(text) from None
    if not phonenumbers.is_valid_number(parsed):
        raise _invalid_number(text)
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return Destination(e164, phonenumbers.region_code_for_number(parsed))


def _invalid_number(text: str) -> Rejected:
    shown = repr(text[:40]) + ("..." if len(text) > 40 else "")  # a hostile one can be huge
    return Rejected("invalid_number", f"invalid number {shown}")


def _e164_fast(digits: str) -> PhoneNumber | None:
    """A plain ``+<country code><national number>`` without ``parse``'s normalisation (a
    quarter of its cost); None for anything else, which takes the full parse."""
    import phonenumbers

    if not _PLAIN_E164.match(digits):
        return None
    for size in (1, 2, 3):  # country codes are prefix-free
        code = int(digits[1 : 1 + size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[1 + size :]
            if national.startswith("0"):  # Italian-style leading zeros: let parse handle them
                return None
            return phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
    return None


def parse_key(text: str) -> str:
    """``default``, a country code (``HU``, ``hu``) or an E.164 prefix (``+3630``)."""
    if text.lower() == "default":
        return "default"
    if _PREFIX.match(text):
        return text
    if _COUNTRY.match(text):
        import phonenumbers

        code = text.upper()
        if code in phonenumbers.SUPPORTED_REGIONS:
            return code
    raise BadInput(
        f"bad price destination {text!r}: use default, a country code like HU, "
        "or a prefix like +3630"
    )


class PriceBook:
    """All prices in memory (a few thousand rows at most), for fast lookups."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table
        self.lengths = sorted({len(k) for k in table if k.startswith("+")}, reverse=True)
        # Quotes already made with this book: a stream charges the same destinations again.
        self._quotes: dict[tuple[str, str, int, int], Quote] = {}

    @classmethod
    def load(cls, conn: Connection, known: PriceBook | None = None) -> PriceBook:
        """The prices as they are now: ``known`` itself if it holds the same, so that its
        quotes serve again (a batch that makes every quote anew spends a tenth of its time
        on them)."""
        table = {k: p for k, p in conn.execute(select(prices.c.key, prices.c.price))}
        return known if known is not None and known.table == table else cls(table)

    def rule_for(self, dest: Destination) -> tuple[str, int]:
        for n in self.lengths:
            key = dest.number[:n]
            if key in self.table:
                return key, self.table[key]
        if dest.country and dest.country in self.table:
            return dest.country, self.table[dest.country]
        if "default" in self.table:
            return "default", self.table["default"]
        raise Rejected("no_price", f"no price for {dest.number} and no default price")

    def near_misses(self, dest: Destination, rule: str) -> list[dict[str, str]]:
        """Prices that almost applied to ``dest`` and did not: a country sharing its calling
        code (+447911123456 is Guernsey, GG, so a GB price does not apply) and a prefix off
        by its last digit (+36301 for +36302...), longer than the rule that matched."""
        import phonenumbers

        found: list[dict[str, str]] = []
        if kind_of(rule) == "default" and dest.country:
            code = phonenumbers.country_code_for_region(dest.country)
            for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ()):
                if region != dest.country and region in self.table:
                    found.append({"rule": region, "kind": "country",
                                  "reason": f"{dest.number} is in {dest.country}, which "
                                            f"shares the calling code +{code} with {region}"})
        matched = len(rule) if rule.startswith("+") else 0
        for key in sorted(k for k in self.table if k.startswith("+") and len(k) > matched):
            near = dest.number[: len(key)]
            if len(near) == len(key) and key[:-1] == near[:-1] and key != near:
                found.append({"rule": key, "kind": "prefix",
                              "reason": f"{dest.number} starts with {near}, not {key}"})
        return found

    def quote(self, to: str, parts: Parts) -> Quote:
        key = (to, parts.encoding, parts.units, parts.parts)
        made = self._quotes.get(key)
        if made is not None:
            return made
        dest = destination(to)
        rule, price = self.rule_for(dest)
        encoding = parts.encoding if parts.units or parts.encoding != "-" else None
        cost = price * parts.parts
        if cost > MAX_MILLIS:  # a huge price: refused before any write, never stored
            raise Rejected("amount_out_of_range",
                           f"cost {format_amount(cost)} ({parts.parts} part(s) at "
                           f"{format_amount(price)}) is above {format_amount(MAX_MILLIS)}")
        made = Quote(dest.number, dest.country, rule, price, encoding, parts.parts, cost,
                     journal.message_detail(dest.number, parts.parts, rule), to_decimal(cost),
                     to_decimal(price))
        if len(self._quotes) >= _QUOTES_KEPT:
            self._quotes.clear()
        self._quotes[key] = made
        return made


def given_parts(count: int) -> Parts:
    """Parts stated by the caller (``--parts N``) instead of counted from a text."""
    if not 1 <= count <= MAX_PARTS:
        raise BadInput(f"bad parts {count}: must be 1-{MAX_PARTS}")
    return Parts("-", 0, count)


# -- price administration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceRow:
    key: str
    kind: str
    price: Decimal
    updated_at: str | None


def kind_of(key: str) -> str:
    """``default``, ``country`` or ``prefix``: what kind of price rule a key is."""
    return "default" if key == "default" else "prefix" if key.startswith("+") else "country"


def parse_price(text: str) -> int:
    """A price per part: an amount that is never negative."""
    if text.startswith("-") and text[1:2].isdigit():
        raise BadInput(f"bad price {text}: a price cannot be negative")
    return parse_amount(text, what="price")


def set_price(db: Db, key_text: str, price_text: str) -> PriceRow:
    key, price = parse_key(key_text), parse_price(price_text)
    with db.write() as conn:
        _upsert(conn, key, price, db.actor)
    return PriceRow(key, kind_of(key), to_decimal(price), clock.iso(clock.now_us()))


def _upsert(conn: Connection, key: str, price: int, actor: str) -> None:
    now = clock.now_us()
    old = conn.execute(delete(prices).where(prices.c.key == key)
                       .returning(prices.c.price)).scalar()
    conn.execute(prices.insert(), {"key": key, "price": price, "updated_at": now})
    journal.record(conn, at=now, kind="price.set", actor=actor, ref=key,
                   detail=journal.change({"price": str(to_decimal(price))},
                                         {"price": None if old is None
                                          else str(to_decimal(old))}))


def delete_price(db: Db, key_text: str) -> str:
    key = parse_key(key_text)
    with db.write() as conn:
        old = conn.execute(delete(prices).where(prices.c.key == key)
                           .returning(prices.c.price)).scalar()
        if old is None:
            raise NotFound(f"no price for {key!r}", code="no_price")
        journal.record(conn, at=clock.now_us(), kind="price.deleted", actor=db.actor, ref=key,
                       detail={"old": {"price": str(to_decimal(old))}})
    return key


def list_prices(db: Db) -> list[PriceRow]:
    with db.read() as conn:
        rows = conn.execute(select(prices)).all()
    order = {"default": 0, "country": 1, "prefix": 2}
    return sorted(
        (PriceRow(r.key, kind_of(r.key), to_decimal(r.price), clock.iso(r.updated_at))
         for r in rows),
        key=lambda p: (order[p.kind], p.key),
    )


@dataclass(frozen=True, slots=True)
class ImportReport:
    imported: int  # prices written (new or changed)
    errors: list[dict[str, object]]
    unchanged: int = 0  # prices the file repeats as they are: not rewritten


_KEY_COLUMNS = ("destination", "key", "prefix")


def import_csv(
    db: Db, path: Path, *, progress: Callable[[int], None] | None = None
) -> ImportReport:
    """Import a price file; see ``import_text``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read price file {str(path)!r}: {e}") from None
    return import_text(db, text, progress=progress)


def _columns(header: list[str]) -> tuple[int, int] | None:
    """Where the destination and the price are, from a header row (``price list --csv``
    writes ``key,kind,price,updated_at``); None for a row that is no header."""
    names = [h.strip().lower() for h in header]
    if not names or names[0] not in _KEY_COLUMNS:
        return None
    return 0, names.index("price") if "price" in names else 1


def import_text(
    db: Db, text: str, *, progress: Callable[[int], None] | None = None
) -> ImportReport:
    """Import ``destination,price`` rows (a header row is optional, and with one any other
    column, such as an export's kind and updated_at, is ignored); all or nothing.

    Every bad row is reported with its line number; if there is any, nothing is imported.
    A price the file repeats as it is stays untouched (no journal event, same updated_at).
    """
    good: dict[str, int] = {}
    errors: list[dict[str, object]] = []
    key_at, price_at, width = 0, 1, 2
    for lineno, row in enumerate(csv.reader(text.lstrip("\ufeff").splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].startswith("#"):
            continue
        if lineno == 1 and (found := _columns(row)) is not None:
            (key_at, price_at), width = found, len(row)
            continue
        try:
            if len(row) != width:
                raise BadInput(f"expected {width} fields (destination,price), got {len(row)}"
                               if width == 2 else f"expected {width} fields, got {len(row)}")
            good[parse_key(row[key_at].strip())] = parse_price(row[price_at].strip())
        except BadInput as e:
            errors.append({"line": lineno, "row": ",".join(row), "error": e.message})
    if errors:
        return ImportReport(0, errors)
    with db.write() as conn:
        current = {k: p for k, p in conn.execute(select(prices.c.key, prices.c.price))}
        changed = {k: p for k, p in good.items() if current.get(k) != p}
        for key, price in changed.items():
            _upsert(conn, key, price, db.actor)
            if progress is not None:
                progress(1)
    return ImportReport(len(changed), [], len(good) - len(changed))
