"""Hostile bytes in ``charge --file`` lines and in the Python API's ChargeRequest: a bad line
or request gets its own ``bad_input`` result, every other one is charged, on both engines."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smscredits.charging import Charger, ChargeRequest
from tests.helpers import balance, lines, verified

TO = "+36301234567"
GOOD = b'{"user":"alice","to":"+36301234567","parts":1}'


@pytest.fixture
def alice(cli: Any) -> Any:
    """alice with 1000 credits and a default price of 1 per part."""
    for args in (("price", "set", "default", "1"), ("user", "add", "alice"),
                 ("power", "create", "alice", "credits", "--initial", "1000")):
        assert cli(*args).exit_code == 0
    return cli


def bad(id_: str, line: bytes, needle: str) -> Any:
    return pytest.param(line, needle, id=id_)


BAD_LINES = [
    bad("surrogate-user", b'{"user":"\\ud800","to":"+36301234567","parts":1}', "user"),
    bad("surrogate-to", b'{"user":"alice","to":"\\ud800","parts":1,"id":"s-2"}', "to"),
    bad("surrogate-id", b'{"user":"alice","to":"+36301234567","parts":1,"id":"\\udfff"}', "id"),
    bad("surrogate-text", b'{"user":"alice","to":"+36301234567","text":"hi \\ud83d"}', "text"),
    bad("surrogate-key", b'{"\\ud800":1}', "unknown field"),
    bad("nul-user", b'{"user":"alice\\u0000","to":"+36301234567","parts":1}', "NUL"),
    bad("nul-to", b'{"user":"alice","to":"+3630\\u0000","parts":1,"id":"n-2"}', "NUL"),
    bad("nul-id", b'{"user":"alice","to":"+36301234567","parts":1,"id":"n\\u00003"}', "id"),
    bad("long-id", b'{"user":"alice","to":"+36301234567","parts":1,"id":"' + b"i" * 129 + b'"}',
        "id"),
    bad("deep-array", b"[" * 100_000, "nested too deeply"),
    bad("deep-object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    bad("deep-in-a-field", b'{"user":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON"),
    bad("invalid-utf8", b'{"user":"al\xffice","to":"+36301234567","parts":1}', "UTF-8"),
    bad("encoded-surrogate", b'{"user":"\xed\xa0\x80","to":"+36301234567","parts":1}', "UTF-8"),
    bad("utf16-bom", b"\xff\xfe{\x00}\x00", "UTF-8"),
    bad("latin1", b'{"user":"\xe1lmos","to":"+36301234567","parts":1}', "UTF-8"),
    bad("blank", b"", "empty line"),
    bad("spaces", b"  \t ", "empty line"),
    bad("cr-only", b"\r", "empty line"),
    bad("parts-huge", b'{"user":"alice","to":"+36301234567","parts":' + b"1" * 31 + b"}",
        "parts"),
    bad("parts-too-many-digits", b'{"user":"alice","to":"+36301234567","parts":'
        + b"9" * 5000 + b"}", "JSON"),
    bad("parts-zero", b'{"user":"alice","to":"+36301234567","parts":0}', "parts"),
    bad("parts-negative", b'{"user":"alice","to":"+36301234567","parts":-1}', "parts"),
    bad("parts-true", b'{"user":"alice","to":"+36301234567","parts":true}', "parts"),
    bad("parts-string", b'{"user":"alice","to":"+36301234567","parts":"2"}', "parts"),
    bad("parts-float", b'{"user":"alice","to":"+36301234567","parts":2.0}', "parts"),
    bad("parts-nan", b'{"user":"alice","to":"+36301234567","parts":NaN}', "parts"),
    bad("parts-infinity", b'{"user":"alice","to":"+36301234567","parts":-Infinity}', "parts"),
    bad("user-number", b'{"user":42,"to":"+36301234567","parts":1}', "strings"),
    bad("to-number", b'{"user":"alice","to":36301234567,"parts":1}', "strings"),
    bad("nul-raw", b'{"user":"al\x00ice","to":"+36301234567","parts":1}', "JSON"),
    bad("many-unknown-fields", b"{" + b",".join(b'"f%d":1' % i for i in range(10_000)) + b"}",
        "unknown field"),
    bad("array", b"[1,2]", "JSON object"),
    bad("void-note-too-long", b'{"op":"void","id":"h-1","note":"' + b"n" * 1001 + b'"}',
        "note too long"),
    bad("string", b'"\\ud800"', "JSON object"),
]


@pytest.mark.parametrize("line, needle", BAD_LINES)
def test_a_hostile_line_gets_its_own_bad_input_and_the_others_are_charged(
        alice: Any, line: bytes, needle: str) -> None:
    run = alice("charge", "--file", "-", input=b"\n".join([GOOD, line, GOOD]) + b"\n")
    assert "Traceback" not in run.stdout + run.stderr
    out = lines(run)
    assert [(r["line"], r["status"]) for r in out] == [(1, "charged"), (2, "error"),
                                                       (3, "charged")]
    assert out[1]["reason"] == "bad_input"
    assert out[1]["message"].startswith("line 2: ") and needle in out[1]["message"]
    assert [r["balance"] for r in (out[0], out[2])] == [999, 998]
    assert run.exit_code == 2
    assert ("3 line(s): charged 2, replayed 0, refused 0, errors 1 (bad_input 1); "
            "2 credits charged\n") in run.stderr
    assert balance(alice) == 998
    assert verified(alice)


def test_a_very_long_line_is_answered_like_any_other(alice: Any) -> None:
    text = "x" * 2_000_000  # 13 072 parts: no message is sent in more than 255
    long_text = json.dumps({"user": "alice", "to": TO, "text": text}).encode()
    long_to = json.dumps({"user": "alice", "to": "1" * 2_000_000, "parts": 1}).encode()
    run = alice("charge", "--file", "-",
                input=b"\n".join([GOOD, long_text, long_to, GOOD]) + b"\n")
    assert [(r["status"], r["reason"]) for r in lines(run)] == [
        ("charged", None), ("error", "bad_input"),
        ("rejected", "invalid_number"), ("charged", None)]
    assert lines(run)[1]["message"] == "text too long: 13072 parts, at most 255"
    assert len(lines(run)[2]["message"]) < 100  # the number is quoted cut short
    assert run.exit_code == 2  # a malformed line: bad input
    assert verified(alice)


@pytest.mark.parametrize("line", [
    pytest.param(b"\xef\xbb\xbf" + GOOD, id="bom"),
    pytest.param(GOOD + b"\r", id="crlf"),
    pytest.param(b'{"user":"bob","user":"alice","to":"+36301234567","parts":1}',
                 id="duplicate-key-last-wins"),
    pytest.param(b'  {"user":"alice","to":"+36301234567","text":"caf\\u00e9 \\ud83d\\ude00"} ',
                 id="escaped-pair"),
    pytest.param(b'{"user":"alice","to":"+36301234567","text":"nul \\u0000 in a text"}',
                 id="nul-in-text"),
])
def test_odd_but_well_formed_lines_are_charged(alice: Any, line: bytes) -> None:
    run = alice("charge", "--file", "-", input=b"\n".join([GOOD, line, GOOD]) + b"\n")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert [(r["line"], r["status"]) for r in lines(run)] == [
        (1, "charged"), (2, "charged"), (3, "charged")]
    assert balance(alice) == 997


def test_a_blank_line_and_crlf_line_ends_in_a_file(alice: Any, tmp_path: Any) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_bytes(GOOD + b"\r\n\r\n" + GOOD + b"\r\n\n" + GOOD)
    run = alice("charge", "--file", str(path))
    assert [(r["line"], r["status"]) for r in lines(run)] == [
        (1, "charged"), (2, "error"), (3, "charged"), (4, "error"), (5, "charged")]
    assert run.exit_code == 2
    assert balance(alice) == 997


# -- the Python API ------------------------------------------------------------------------


def req(**fields: Any) -> ChargeRequest:
    return ChargeRequest(**{"user": "alice", "to": TO, "parts": 1, **fields})


BAD_REQUESTS = [
    pytest.param(req(user="\x00"), "NUL", id="nul-user"),
    pytest.param(req(user="alice\x00"), "NUL", id="nul-after-user"),
    pytest.param(req(user="\ud800"), "surrogate", id="surrogate-user"),
    pytest.param(req(to="+3630\x00", id="a-1"), "NUL", id="nul-to"),
    pytest.param(req(to="\udcff", id="a-2"), "surrogate", id="surrogate-to"),
    pytest.param(req(parts=None, text="hi \ud800"), "surrogate", id="surrogate-text"),
    pytest.param(req(id="i" * 129), "message id", id="long-id"),
    pytest.param(req(id="a\x00"), "message id", id="nul-id"),
    pytest.param(req(id="\ud800"), "message id", id="surrogate-id"),
    pytest.param(req(id="with space"), "message id", id="id-with-space"),
    pytest.param(req(id=""), "message id", id="empty-id"),
    pytest.param(req(id=7), "message id", id="id-not-a-string"),
    pytest.param(req(user=None), "user", id="user-none"),
    pytest.param(req(to=b"+36301234567"), "to", id="to-bytes"),
    pytest.param(req(parts=True), "parts", id="parts-true"),
    pytest.param(req(parts=2.0), "parts", id="parts-float"),
    pytest.param(req(parts=Decimal(2)), "parts", id="parts-decimal"),
    pytest.param(req(parts=None, text=5), "text", id="text-not-a-string"),
]


@pytest.mark.parametrize("bad_req, needle", BAD_REQUESTS)
def test_a_bad_request_gets_bad_input_and_spoils_nothing(db: Any, bad_req: ChargeRequest,
                                                         needle: str) -> None:
    from smscredits import ledger, pricing
    from smscredits.verify import verify

    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=10_000)
    pricing.set_price(db, "default", "1")
    with Charger(db) as charger:
        alone = charger.charge(bad_req)
        batch = charger.charge_batch([req(id="g-1"), bad_req, req(id="g-2")])
        after = charger.charge(req(id="g-3"))
    assert (alone.status, alone.reason, alone.exit_code) == ("error", "bad_input", 2)
    assert needle in (alone.message or "")
    assert [(r.status, r.id) for r in batch] == [("charged", "g-1"), ("error", None),
                                                 ("charged", "g-2")]
    assert batch[1].reason == "bad_input"
    assert (after.status, after.balance) == ("charged", Decimal(7))
    assert ledger.get_account(db, "alice").balance == Decimal(7)
    assert verify(db).ok


# -- arbitrary bytes -------------------------------------------------------------------------

VALID = st.builds(
    lambda parts, n: json.dumps({"user": "alice", "to": TO, "parts": parts}).encode()
    if n % 2 else json.dumps({"user": "alice", "to": TO, "text": "x" * parts}).encode(),
    st.integers(1, 3), st.integers(0, 1))
# Any JSON a hostile client could send: every field, any value, lone surrogates included.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
                    st.floats(), st.text(st.characters(exclude_categories=()), max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
HOSTILE_JSON = st.dictionaries(
    st.sampled_from(["user", "to", "text", "parts", "id", "extra"]), VALUES, max_size=5,
).map(lambda d: json.dumps(d).encode())
RAW = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))
LINE = st.one_of(VALID.map(lambda b: (True, b)), RAW.map(lambda b: (False, b)),
                 HOSTILE_JSON.map(lambda b: (False, b)))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sent=st.lists(LINE, min_size=1, max_size=12))
def test_arbitrary_bytes_never_break_a_batch(alice: Any, sent: list[tuple[bool, bytes]]) \
        -> None:
    before = balance(alice)
    data = b"\n".join(raw for _, raw in sent) + b"\n"
    run = alice("charge", "--file", "-", input=data)  # an exception here fails the test
    assert "Traceback" not in run.stdout + run.stderr
    out = lines(run)
    assert [r["line"] for r in out] == list(range(1, len(sent) + 1))
    for (valid, _), r in zip(sent, out, strict=True):
        if valid:
            assert r["status"] == "charged", r
    spent = sum(r["cost"] for r in out if r["status"] == "charged")
    assert balance(alice) == before - spent
    malformed = any(r["reason"] == "bad_input" for r in out)
    assert run.exit_code == (2 if malformed else 0), run.stderr
    assert verified(alice)


def test_a_well_formed_name_that_is_not_ascii_is_an_unknown_user(db: Any) -> None:
    from smscredits import ledger, pricing

    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=10_000)
    pricing.set_price(db, "default", "1")
    with Charger(db) as charger:
        out = charger.charge_batch([req(id="j-1"), req(user="José", id="j-2"), req(id="j-3")])
        again = charger.charge(req(user="José", id="j-2"))
    assert [(r.status, r.reason) for r in out] == [
        ("charged", None), ("rejected", "unknown_user"), ("charged", None)]
    assert (again.reason, again.replayed) == ("unknown_user", True)
