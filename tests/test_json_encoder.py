"""The one JSON writer: the text the stdlib's json writes (compact or indented by 2, keys in
order, non-ASCII as it is, the same escapes), Decimals as exact numbers, and any str written,
a lone surrogate in it too; a ``charge --file`` result line is ``to_json`` of its dict."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smscredits import render
from smscredits.charging import ChargeResult
from smscredits.render import charge_line, to_json

_MARK = uuid.uuid4().hex  # no generated text holds it
_MARKED = re.compile(f'"{_MARK}([^"]*)"')
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _exact(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _MARK + format(value, "f")
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value


def reference(value: Any, indent: int | None = None) -> str:
    """The stdlib's JSON, a Decimal as its exact number, a lone surrogate as its escape."""
    text = json.dumps(_exact(value), ensure_ascii=False, indent=indent,
                      separators=(",", ":") if indent is None else (",", ": "))
    text = _MARKED.sub(r"\1", text)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


numbers = (st.integers() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]))
decimals = (st.decimals(allow_nan=False, allow_infinity=False)
            | st.decimals(allow_nan=False, allow_infinity=False, places=3))
controls = st.text(st.sampled_from("\x00\x01\b\t\n\f\r\x1f\x7f\x80\x9f\u2028\u2029\"\\/é😀a"))
texts = st.text() | controls
scalars = st.none() | st.booleans() | numbers | decimals | texts


def documents(strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | numbers | decimals | strings
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(strings, inner, max_size=4), max_leaves=20)


@given(documents(texts))
def test_to_json_is_the_stdlib_text(doc: Any) -> None:
    assert to_json(doc) == reference(doc)
    assert to_json(doc, indent=2) == reference(doc, indent=2)


# Text with lone surrogates (bytes that were not UTF-8, as Python decodes them), in values
# and in keys, at any depth.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
broken = st.lists(surrogates | st.characters(), max_size=8).map("".join)


@given(documents(broken))
def test_any_str_is_written_a_lone_surrogate_escaped(doc: Any) -> None:
    assert to_json(doc) == reference(doc)
    assert to_json(doc, indent=2) == reference(doc, indent=2)
    assert json.loads(to_json(doc), parse_float=Decimal) == json.loads(reference(doc),
                                                                      parse_float=Decimal)


def test_a_lone_surrogate_comes_out_escaped_and_parses_back() -> None:
    doc = {"user": "a\udcffb", "k\ud800": ["\udc80", {"\udfff": 1}], "n": Decimal("0.050")}
    assert to_json(doc) == ('{"user":"a\\udcffb","k\\ud800":["\\udc80",{"\\udfff":1}],'
                            '"n":0.050}')
    assert to_json(doc, indent=2) == (
        '{\n  "user": "a\\udcffb",\n  "k\\ud800": [\n    "\\udc80",\n    {\n'
        '      "\\udfff": 1\n    }\n  ],\n  "n": 0.050\n}')
    for indent in (None, 2):
        assert json.loads(to_json(doc, indent), parse_float=Decimal) == doc


def test_escapes_and_numbers_are_written_as_before() -> None:
    doc = {"s": "\x7f\u2028\u2029\b\f\x1f\x00é", "big": 2**70, "d": [Decimal("1E+3"),
           Decimal("-0.00"), Decimal("1E-9"), Decimal("12.5")], "t": (1, True, None)}
    assert to_json(doc) == ('{"s":"\x7f\u2028\u2029\\b\\f\\u001f\\u0000é",'
                            '"big":1180591620717411303424,"d":[1000,-0.00,0.000000001,12.5],'
                            '"t":[1,true,null]}')


def test_keys_that_are_no_str_are_written_as_str() -> None:
    assert to_json({1: "a", None: 2, Decimal("2.50"): [3]}) == '{"1":"a","None":2,"2.50":[3]}'


def test_what_json_cannot_hold_is_refused() -> None:
    for value in (object(), {1, 2}, {"a": b"bytes"}):
        with pytest.raises(TypeError):
            to_json(value)
    with pytest.raises(ValueError):
        to_json({}, indent=4)


# -- charge --file result lines ---------------------------------------------------------------

CHARGED = ChargeResult("charged", "m-1", "alice", "+36301234567", cost=Decimal("0.1"),
                       parts=2, encoding="GSM-7", price=Decimal("0.05"), rule="+3630",
                       country="HU", balance=Decimal("99.9"))
REFUSED = ChargeResult(
    "rejected", "m-2", "bob", "+36301234567", reason="insufficient_credits",
    message="insufficient credits: cost 0.05, available 0.02 (balance 0.02, overdraft 0)",
    cost=Decimal("0.05"), parts=1, encoding="GSM-7", price=Decimal("0.05"), rule="+3630",
    country="HU", balance=Decimal("0.02"),
    refusal={"cost": Decimal("0.05"), "available": Decimal("0.02"),
             "balance": Decimal("0.02"), "overdraft": Decimal("0")})
ERROR = ChargeResult("error", None, None, None, reason="bad_input",
                     message='line 3: not JSON: "\udcff\x00\u2028é', metered=False)


@pytest.mark.parametrize("result", [CHARGED, REFUSED, ERROR], ids=["charged", "refused", "error"])
def test_a_result_line_is_to_json_of_its_dict(result: ChargeResult) -> None:
    doc = {**result.as_dict(), "line": 7}
    for _ in range(2):  # the second time, its cost and price are known
        text = charge_line(result, 7)
        assert text == to_json(doc)
        assert json.loads(text, parse_float=Decimal) == doc
        assert list(json.loads(text))[-1] == "line"


def test_a_result_line_reads_the_refusal_as_numbers() -> None:
    assert charge_line(REFUSED, 12) == (
        '{"status":"rejected","id":"m-2","user":"bob","to":"+36301234567",'
        '"reason":"insufficient_credits","message":"insufficient credits: cost 0.05, '
        'available 0.02 (balance 0.02, overdraft 0)","cost":0.05,"parts":1,'
        '"encoding":"GSM-7","price":0.05,"rule":"+3630","country":"HU","balance":0.02,'
        '"metered":true,"replayed":false,"refusal":{"cost":0.05,"available":0.02,'
        '"balance":0.02,"overdraft":0},"held":null,"expires_at":null,"line":12}')


def test_a_result_line_writes_its_own_amounts_not_an_equal_ones() -> None:
    """The numbers kept for a cost and price serve only those very objects: an equal Decimal
    written otherwise (0.050 for 0.05) is written as it is."""
    for cost, price in [(Decimal("0.05"), Decimal("0.05")), (Decimal("0.050"), Decimal("0.05")),
                        (Decimal("0.05"), Decimal("0.050")), (None, None),
                        (Decimal("0.05"), None)]:
        r = ChargeResult("charged", "m", "u", "+1", cost=cost, price=price,
                         balance=Decimal("1.500"))
        assert charge_line(r, 1) == to_json({**r.as_dict(), "line": 1})


def test_result_lines_stay_right_past_the_kept_numbers() -> None:
    for i in range(render._SHOWN_MAX + 10):
        r = ChargeResult("charged", "m", "u", "+1", cost=Decimal(i).scaleb(-3),
                         price=Decimal(i + 1).scaleb(-2), balance=Decimal(i))
        assert charge_line(r, i) == to_json({**r.as_dict(), "line": i})
    assert len(render._shown) <= render._SHOWN_MAX
