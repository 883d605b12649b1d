"""Result lines are written by a fast path for flat dicts: it must write exactly what the
general JSON writer writes, for every kind of value a result holds."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from smscredits.render import to_json

plain_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63),
    st.text(), st.decimals(allow_nan=False, allow_infinity=False, places=3,
                           min_value=-(10**12), max_value=10**12),
)


@given(st.dictionaries(st.text(), plain_values, max_size=20))
def test_flat_lines_match_the_general_writer(doc: dict) -> None:
    general = to_json([doc])[1:-1]  # a list goes through the general path
    assert to_json(doc) == general
    assert json.loads(to_json(doc), parse_float=Decimal) == {
        k: v for k, v in doc.items()}


def test_a_result_line_keeps_exact_amounts_and_hostile_text() -> None:
    line = to_json({"user": 'a"b\\c\u2028\x00', "cost": Decimal("0.050"),
                    "balance": Decimal("-12.5"), "metered": True, "line": 3, "reason": None})
    assert line == ('{"user":"a\\"b\\\\c\u2028\\u0000","cost":0.050,"balance":-12.5,'
                    '"metered":true,"line":3,"reason":null}')


def test_nested_values_take_the_general_path() -> None:
    assert to_json({"a": [Decimal("1.5")], "b": {"c": None}}) == '{"a":[1.5],"b":{"c":null}}'
