"""JSON lines as scripts read them: exact amounts, hostile text escaped as JSON wants it.
(tests/test_json_encoder.py holds the writer to the stdlib's text for any value.)"""

from __future__ import annotations

from decimal import Decimal

from smscredits.render import to_json


def test_a_result_line_keeps_exact_amounts_and_hostile_text() -> None:
    line = to_json({"user": 'a"b\\c\u2028\x00', "cost": Decimal("0.050"),
                    "balance": Decimal("-12.5"), "metered": True, "line": 3, "reason": None})
    assert line == ('{"user":"a\\"b\\\\c\u2028\\u0000","cost":0.050,"balance":-12.5,'
                    '"metered":true,"line":3,"reason":null}')


def test_nested_values_keep_exact_amounts() -> None:
    assert to_json({"a": [Decimal("1.5")], "b": {"c": None}}) == '{"a":[1.5],"b":{"c":null}}'
