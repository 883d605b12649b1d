"""The fast charge path gives what the general code gives: the same events and hashes, the
same result lines, and a Charger that keeps what it read between batches never acts on
stale accounts, balances, limits or prices."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smscredits import journal, ledger, pricing
from smscredits.charging import Charger, ChargeRequest, ChargeResult
from smscredits.charging.batch import Batch
from smscredits.charging.stream import quick_request, request_of
from smscredits.errors import BadInput
from smscredits.render import charge_line, result_json, to_json
from smscredits.storage.engine import open_db

TO = "+36301234567"
text_ = st.text(max_size=40)
millis = st.integers(min_value=-(10**15), max_value=10**15)


@given(to=text_, parts=st.integers(1, 255), rule=text_)
def test_a_charges_detail_is_the_general_detail(to: str, parts: int, rule: str) -> None:
    assert journal.message_detail(to, parts, rule) == \
        journal.dump_detail({"to": to, "parts": parts, "rule": rule})


@given(at=millis, user_id=st.integers(1, 2**62), power_id=st.integers(1, 2**62), amount=millis,
       balance_after=millis, ref=text_, actor=text_, detail=text_,
       prev_hash=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_a_charges_event_is_the_general_event(at: int, user_id: int, power_id: int,
                                              amount: int, balance_after: int, ref: str,
                                              actor: str, detail: str,
                                              prev_hash: str | None) -> None:
    """The charge path's own event builder makes the row, and the hash, ``event`` makes."""
    assert journal.charged(at, user_id, power_id, amount, balance_after, ref, actor, detail,
                           prev_hash) == journal.event(
        at=at, kind="message.charged", actor=actor, user_id=user_id, power_id=power_id,
        amount=amount, balance_after=balance_after, ref=ref, detail=detail,
        prev_hash=prev_hash)


amounts = st.none() | st.decimals(min_value=-(10**12), max_value=10**12, places=3,
                                  allow_nan=False)
optional = st.none() | text_
_numbers = st.decimals(min_value=-(10**12), max_value=10**12, places=3, allow_nan=False)
# The two shapes of a refusal's numbers: by the balance, and by a limit window.
refusals = st.none() | st.fixed_dictionaries(
    {"cost": _numbers, "available": _numbers, "balance": _numbers, "overdraft": _numbers}) | (
    st.fixed_dictionaries({"window": st.sampled_from(["day", "week", "month"]),
                           "limit": _numbers, "spent": _numbers, "cost": _numbers,
                           "resets_at": text_}))


@given(status=st.sampled_from(["charged", "rejected", "error"]), id_=optional, user=optional,
       to=optional, reason=optional, message=optional, cost=amounts,
       parts=st.none() | st.integers(1, 255), encoding=optional, price=amounts, rule=optional,
       country=optional, balance=amounts, metered=st.booleans(), replayed=st.booleans(),
       refusal=refusals, line=st.integers(1, 10**9))
def test_result_line_is_the_general_json(status: str, id_: str | None, user: str | None,
                                         to: str | None, reason: str | None,
                                         message: str | None, cost: Decimal | None,
                                         parts: int | None, encoding: str | None,
                                         price: Decimal | None, rule: str | None,
                                         country: str | None, balance: Decimal | None,
                                         metered: bool, replayed: bool,
                                         refusal: dict[str, Any] | None, line: int) -> None:
    r = ChargeResult(status, id_, user, to, reason, message, cost, parts, encoding, price,
                     rule, country, balance, metered, replayed, refusal)
    assert charge_line(r, line) == to_json({**r.as_dict(), "line": line})
    assert result_json(r) == to_json(_without_line(r))  # what the HTTP API answers


def _account(db: Any, name: str = "alice", initial: int = 100_000) -> None:
    ledger.add_user(db, name)
    ledger.create_power(db, name, initial=initial)


def _charge(charger: Charger, user: str = "alice", parts: int = 1,
            msg_id: str | None = None) -> ChargeResult:
    return charger.charge_batch([ChargeRequest(user, TO, parts=parts, id=msg_id)])[0]


def test_a_charger_sees_changes_made_through_another_connection(db: Any, db_url: str) -> None:
    pricing.set_price(db, "default", "1")
    _account(db)
    charger = Charger(db)
    assert _charge(charger).balance == Decimal("99")
    other = open_db(db_url, actor="admin")
    try:
        ledger.add_credits(other, "alice", 50_000)
        assert _charge(charger).balance == Decimal("148")
        pricing.set_price(other, "default", "2")
        assert _charge(charger).cost == Decimal("2")
        ledger.set_limits(other, "alice", {"day": 4_000})
        refused = _charge(charger)
        assert (refused.status, refused.reason) == ("rejected", "daily_limit")
        ledger.set_disabled(other, "alice", True)
        assert _charge(charger).reason == "user_disabled"
        ledger.add_user(other, "bob")
        assert _charge(charger, "bob").metered is False
    finally:
        other.dispose()
    assert ledger.get_account(db, "alice").balance == Decimal("146")


def test_a_charger_sees_changes_made_through_its_own_database_handle(db: Any) -> None:
    """Gateway code may charge and adjust credits through one Db (one pooled connection)."""
    pricing.set_price(db, "default", "1")
    _account(db)
    charger = Charger(db)
    assert _charge(charger).balance == Decimal("99")
    ledger.add_credits(db, "alice", -90_000)
    assert _charge(charger).balance == Decimal("8")
    ledger.set_credits(db, "alice", 1_000)
    assert _charge(charger).balance == Decimal("0")
    refused = _charge(charger)
    assert (refused.status, refused.reason) == ("rejected", "insufficient_credits")
    assert ledger.get_account(db, "alice").balance == Decimal("0")


def test_a_failed_batch_leaves_no_trace_in_the_next(db: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that fails part-way is rolled back; the Charger then starts from the database,
    not from the balances it had moved in memory."""
    pricing.set_price(db, "default", "1")
    _account(db)
    charger = Charger(db)
    assert _charge(charger).balance == Decimal("99")

    def failing_flush(self: Any, deferred: Any = None) -> None:
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(Batch, "flush", failing_flush)
        with pytest.raises(RuntimeError):
            charger.charge_batch([ChargeRequest("alice", TO, parts=5)])
    assert _charge(charger).balance == Decimal("98")
    assert ledger.get_account(db, "alice").balance == Decimal("98")


def test_replays_across_batches_of_one_charger(db: Any) -> None:
    pricing.set_price(db, "default", "1")
    _account(db)
    charger = Charger(db)
    first = _charge(charger, parts=2, msg_id="m-1")
    again = _charge(charger, parts=2, msg_id="m-1")
    assert (first.balance, again.balance, again.replayed) == (Decimal("98"), Decimal("98"), True)
    conflict = _charge(charger, parts=3, msg_id="m-1")
    assert conflict.reason == "conflict"
    assert ledger.get_account(db, "alice").balance == Decimal("98")


_WRITTEN = ("balance", "day_key", "day_spent", "week_key", "week_spent", "month_key",
            "month_spent", "last_hash", "id")
_int = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(st.lists(st.tuples(*[_int] * 7, st.none() | st.text(), _int), min_size=1))
def test_power_rows_travel_to_postgres_as_exact_json(rows: list[tuple[Any, ...]]) -> None:
    """The one JSON parameter of the set-based power update holds every value exactly."""
    import json

    from smscredits.storage.hot import _json_records
    from smscredits.storage.tables import powers

    assert json.loads(_json_records(powers, _WRITTEN, rows)) == [
        dict(zip(_WRITTEN, row, strict=True)) for row in rows]


decimals = st.decimals(min_value=-(10**12), max_value=10**12, places=3, allow_nan=False)


@given(id_=text_, user=text_, to=text_, cost=decimals, parts=st.integers(1, 255),
       encoding=st.none() | text_, price=decimals, rule=text_, country=text_, balance=decimals,
       line=st.integers(1, 10**9))
def test_plain_charge_line_is_the_general_json(id_: str, user: str, to: str, cost: Decimal,
                                               parts: int, encoding: str | None,
                                               price: Decimal,
                                               rule: str, country: str, balance: Decimal,
                                               line: int) -> None:
    """The most common line, a plain charge (its encoding None where the caller gave the
    number of parts), takes a shorter way to the same text."""
    r = ChargeResult("charged", id_, user, to, None, None, cost, parts, encoding, price, rule,
                     country, balance)
    assert charge_line(r, line) == to_json({**r.as_dict(), "line": line})
    assert result_json(r) == to_json(_without_line(r))


def _without_line(r: ChargeResult) -> dict[str, Any]:
    return {k: v for k, v in r.as_dict().items() if k != "line"}


_strings = st.sampled_from(["alice", "+36301234567", "m-1", "", " ", "a" * 300, "x\x00"]) | text_
_anything = st.none() | st.booleans() | st.integers(-3, 300) | _strings | st.lists(st.integers())
_objects = st.fixed_dictionaries(
    {"user": _strings | _anything, "to": _strings | _anything},
    optional={"text": _strings | _anything, "parts": st.integers(-1, 300) | _anything,
              "id": _strings | _anything, "ttl": _anything, "status": _anything,
              "note": _anything, "x": _anything})
# Mostly of the shapes quick_request takes, so that it often does.
_usual = st.fixed_dictionaries(
    {"user": _strings, "to": _strings},
    optional={"text": _strings | st.none(), "parts": st.integers(-1, 300) | st.booleans(),
              "id": _strings | st.none()})
_acts = st.fixed_dictionaries({"id": _strings | _anything},
                              optional={"user": _anything, "parts": _anything, "x": _anything})


_ops = st.sampled_from(["charge", "hold", "settle", "void", "dlr"])


@settings(max_examples=300)
@given(st.tuples(_usual, st.sampled_from(["charge", "hold"]))
       | st.tuples(st.fixed_dictionaries({"id": _strings}), st.sampled_from(["settle", "void"]))
       | st.tuples(_objects | _acts, _ops))
def test_the_quick_request_is_the_general_one(case: tuple[dict[str, Any], str]) -> None:
    """The usual objects take ``quick_request`` (``charge --file``'s lines, the HTTP API's
    bodies); whatever it takes, ``request_of`` makes the same request of."""
    data, op = case
    data = {**data, "op": op}
    if any(type(v) is str and "\x00" in v for v in data.values()):
        return  # the callers send an object with a NUL the long way (``quick_request``)
    quick = quick_request(data, op)
    if quick is None:
        return
    try:
        general = request_of(data)
    except BadInput as e:
        raise AssertionError(f"quick took what request_of refuses: {e.message}") from None
    assert quick == general


# Lines that orjson decodes otherwise than the json module, or not at all: the fast decode
# must leave each to the general parser, which gives json's answer.
ODD_LINES = [
    b'{"user":"alice","to":"+36301234567","text":"\\ud800 lone","id":"o-1"}',  # surrogate
    b'{"user":"alice","to":"+36301234567","parts":NaN,"id":"o-2"}',
    b'\xef\xbb\xbf{"user":"alice","to":"+36301234567","parts":1,"id":"o-3"}',  # BOM
    b'{"user":"alice","to":"+36301234567","parts":123456789012345678901234567890}',
    b'{"user":"alice","to":"+36301234567","parts":1e400,"id":"o-5"}',
    b'{"user":"bob","user":"alice","to":"+36301234567","parts":2,"id":"o-6"}',  # last wins
    b'{"user":"alice","to":"+36301234567","parts":2.0,"id":"o-7"}',
    b'{"user":"alice","to":"+36301234567","parts":true,"id":"o-8"}',
    b'{"user":"alice","to":"+36301234567","text":"caf\\u00e9","id":"o-9"}',
    b'{"user":"alice\\u0000","to":"+36301234567","parts":1,"id":"o-10"}',  # NUL
    b"[" * 5000,  # deeper than orjson goes
    b"",  # a blank line gets its answer too
]


def test_the_fast_line_decoder_answers_as_json_does(plain_cli: Any, tmp_path: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    feed = tmp_path / "odd.jsonl"
    feed.write_bytes(b"\n".join(ODD_LINES) + b"\n")
    outputs = []
    for fast in (True, False):
        db = str(tmp_path / f"{fast}.db")
        for args in (["user", "add", "alice"], ["power", "create", "alice", "credits",
                                                "--initial", "10"],
                     ["price", "set", "default", "1"]):
            assert plain_cli("--db", db, *args).exit_code == 0
        with monkeypatch.context() as patch:
            if not fast:  # every line through the general parser
                patch.setattr(orjson, "loads", lambda raw: (_ for _ in ()).throw(ValueError))
            done = plain_cli("--db", db, "charge", "--file", str(feed))
        outputs.append((done.exit_code, done.stdout))
    assert outputs[0] == outputs[1]
    lines = [json.loads(line) for line in outputs[0][1].splitlines()]
    assert [r["status"] for r in lines] == ["error", "error", "charged", "error", "error",
                                            "charged", "error", "error", "charged", "error",
                                            "error", "error"]
    assert lines[8]["balance"] == 6


@given(to=text_, parts=st.integers(1, 255), rule=text_, held=text_, expires_at=text_)
def test_a_holds_detail_is_the_general_detail(to: str, parts: int, rule: str, held: str,
                                              expires_at: str) -> None:
    assert journal.hold_detail(journal.message_detail(to, parts, rule), held, expires_at) == \
        journal.dump_detail({"to": to, "parts": parts, "rule": rule, "held": held,
                             "expires_at": expires_at})


@given(held=text_, parts=st.none() | st.integers(1, 255),
       outcome=st.none() | st.sampled_from(["settled", "voided"]), at_held=st.booleans())
def test_a_releases_detail_is_the_general_detail(held: str, parts: int | None,
                                                 outcome: str | None, at_held: bool) -> None:
    general: dict[str, object] = {"held": held}
    if parts is not None:
        general["parts"] = parts
    if outcome is not None:
        general["outcome"] = outcome
    if at_held:
        general["settled_at_held"] = True
    assert journal.release_detail(held, parts=parts, outcome=outcome,
                                  settled_at_held=at_held) == journal.dump_detail(general)


_field = st.none() | st.integers(-(2**63), 2**63) | text_


@given(prev=st.none() | text_, fields=st.tuples(*[_field] * 10))
def test_an_events_hash_is_of_its_fields_joined(prev: str | None,
                                                fields: tuple[object, ...]) -> None:
    """The hash's text, as ``verify`` and every journal written so far have it."""
    import hashlib

    text = "\x1f".join([prev or "", *["" if f is None else str(f) for f in fields]])
    assert journal.hash_of(prev, fields) == hashlib.sha256(text.encode()).hexdigest()
