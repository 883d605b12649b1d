"""Tests for smscredits.parts: boundary cases derived by hand, plus a greedy reference property."""

from __future__ import annotations

import dataclasses

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec used by the reference)
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smscredits.parts import Parts, count_parts

EURO = "€"
EMOJI = "😀"  # U+1F600, outside the BMP: a UTF-16 surrogate pair (2 code units)
EXTENSION_CHARS = "^{}\\[~]|€\f"


def gsm(units: int, parts: int) -> Parts:
    return Parts("GSM-7", units, parts)


def ucs2(units: int, parts: int) -> Parts:
    return Parts("UCS-2", units, parts)


# --- basics -----------------------------------------------------------------------------------


def test_empty_text_is_one_gsm_part() -> None:
    assert count_parts("") == gsm(0, 1)


def test_parts_is_frozen_with_slots() -> None:
    p = count_parts("hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.parts = 2  # type: ignore[misc]
    assert not hasattr(p, "__dict__")


def test_gsm_specific_characters_stay_gsm() -> None:
    # '@' (0x00), '£', '¥', 'è', 'Δ', 'Ç' (0x09), newline, CR are all in the default alphabet.
    assert count_parts("@£¥èΔÇ\n\r") == gsm(8, 1)


# --- GSM-7 without extension chars ------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, gsm(1, 1)),
        (153, gsm(153, 1)),  # <= 160: single part, the 153 limit does not apply
        (154, gsm(154, 1)),
        (160, gsm(160, 1)),  # exactly the single-part limit
        (161, gsm(161, 2)),  # 153 + 8
        (306, gsm(306, 2)),  # 153 + 153
        (307, gsm(307, 3)),  # 153 + 153 + 1
        (459, gsm(459, 3)),  # 153 * 3
        (460, gsm(460, 4)),  # 153 * 3 + 1
        (612, gsm(612, 4)),  # 153 * 4
        (613, gsm(613, 5)),  # 153 * 4 + 1
    ],
)
def test_gsm_plain_boundaries(n: int, expected: Parts) -> None:
    assert count_parts("a" * n) == expected


# --- GSM-7 extension chars (escape pairs) -----------------------------------------------------


@pytest.mark.parametrize("ch", list(EXTENSION_CHARS))
def test_each_extension_char_costs_two_septets(ch: str) -> None:
    assert count_parts(ch) == gsm(2, 1)


def test_all_extension_chars_together() -> None:
    # 10 extension chars * 2 septets = 20
    assert count_parts(EXTENSION_CHARS) == gsm(20, 1)


def test_form_feed_is_an_extension_char() -> None:
    assert count_parts("\f") == gsm(2, 1)
    assert count_parts("\f" * 80) == gsm(160, 1)  # 160 septets: single part
    assert count_parts("\f" * 81) == gsm(162, 2)  # 76 pairs (152) + 5 pairs (10)


def test_euro_at_single_part_limit() -> None:
    # 80 * 2 = 160 septets: exactly one part
    assert count_parts(EURO * 80) == gsm(160, 1)
    # 81 * 2 = 162 septets > 160; a part holds 76 euros (152 septets, a 77th would need 154):
    # 76 + 5 -> 2 parts
    assert count_parts(EURO * 81) == gsm(162, 2)
    # 153 euros = 306 septets: dividing would say 2 parts, but greedy is 76 + 76 + 1 -> 3 parts
    assert count_parts(EURO * 153) == gsm(306, 3)


def test_escape_pair_moves_to_next_part() -> None:
    # 152 'a' + '€' + 10 'a' = 152 + 2 + 10 = 164 septets.  Part 1 holds the 152 'a'
    # (152 + 2 = 154 > 153), the euro starts part 2: 2 + 10 = 12.  -> 2 parts
    assert count_parts("a" * 152 + EURO + "a" * 10) == gsm(164, 2)
    # Same with '{': identical costs.
    assert count_parts("a" * 152 + "{" + "a" * 10) == gsm(164, 2)


def test_escape_pair_straddle_adds_a_part() -> None:
    # 152 'a' + '€' + 152 'a' = 306 septets = 2 * 153, yet greedy gives
    # part 1: 152 'a' (152); part 2: '€' + 151 'a' (153); part 3: 1 'a' (1) -> 3 parts
    assert count_parts("a" * 152 + EURO + "a" * 152) == gsm(306, 3)
    # 151 'a' + '€' + 153 'a' = 306 septets: part 1 = 151 + 2 = 153 exactly, part 2 = 153 -> 2
    assert count_parts("a" * 151 + EURO + "a" * 153) == gsm(306, 2)


def test_escape_pair_right_after_full_part() -> None:
    # 153 'a' + '€' + 10 'a' = 165 septets: part 1 = 153 'a', part 2 = 2 + 10 = 12 -> 2 parts
    assert count_parts("a" * 153 + EURO + "a" * 10) == gsm(165, 2)


def test_extension_char_crossing_single_part_limit() -> None:
    # 159 'a' + '€' = 161 septets > 160 -> multipart: part 1 = 153 'a', part 2 = 6 'a' + '€' = 8
    assert count_parts("a" * 159 + EURO) == gsm(161, 2)
    # 158 'a' + '€' = 160 septets -> 1 part
    assert count_parts("a" * 158 + EURO) == gsm(160, 1)


# --- non-GSM characters force UCS-2 -----------------------------------------------------------


@pytest.mark.parametrize("ch", ["ő", "ç", "я", "\x1b", "`"])
def test_non_gsm_char_forces_ucs2(ch: str) -> None:
    # 'ç' is NOT folded onto GSM 'Ç' (0x09) by the codec; ESC does not round-trip; '`' is absent.
    assert count_parts(ch) == ucs2(1, 1)
    # one such char among GSM text: the whole text is UCS-2, '€' is then 1 code unit
    assert count_parts("a" * 10 + EURO + ch) == ucs2(12, 1)


def test_capital_c_cedilla_is_gsm() -> None:
    assert count_parts("Ç") == gsm(1, 1)


def test_one_non_gsm_char_turns_long_gsm_text_into_ucs2() -> None:
    # 159 'a' + 'ç' = 160 UTF-16 units > 70 -> 67 + 67 + 26 -> 3 parts
    assert count_parts("a" * 159 + "ç") == ucs2(160, 3)


# --- UCS-2 without surrogate pairs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, ucs2(1, 1)),
        (67, ucs2(67, 1)),  # <= 70: single part
        (68, ucs2(68, 1)),
        (70, ucs2(70, 1)),  # exactly the single-part limit
        (71, ucs2(71, 2)),  # 67 + 4
        (134, ucs2(134, 2)),  # 67 * 2
        (135, ucs2(135, 3)),  # 67 * 2 + 1
        (201, ucs2(201, 3)),  # 67 * 3
        (202, ucs2(202, 4)),  # 67 * 3 + 1
    ],
)
def test_ucs2_plain_boundaries(n: int, expected: Parts) -> None:
    assert count_parts("я" * n) == expected


# --- UCS-2 surrogate pairs --------------------------------------------------------------------


def test_emoji_single_part_limit() -> None:
    # 35 emoji * 2 = 70 units: one part
    assert count_parts(EMOJI * 35) == ucs2(70, 1)
    # 36 * 2 = 72 units > 70; a part holds 33 emoji (66 units, a 34th would need 68):
    # 33 + 3 -> 2 parts
    assert count_parts(EMOJI * 36) == ucs2(72, 2)
    # 67 emoji = 134 units = 2 * 67, but greedy is 33 + 33 + 1 -> 3 parts
    assert count_parts(EMOJI * 67) == ucs2(134, 3)


def test_surrogate_pair_moves_to_next_part() -> None:
    # 66 'я' + emoji = 68 units <= 70 -> 1 part
    assert count_parts("я" * 66 + EMOJI) == ucs2(68, 1)
    # 66 'я' + emoji + 5 'я' = 73 units: part 1 = 66 (66 + 2 = 68 > 67), part 2 = 2 + 5 = 7
    assert count_parts("я" * 66 + EMOJI + "я" * 5) == ucs2(73, 2)


def test_surrogate_pair_straddle_adds_a_part() -> None:
    # 66 'я' + emoji + 66 'я' = 134 units = 2 * 67, yet greedy gives
    # part 1: 66; part 2: emoji + 65 'я' = 67; part 3: 1 -> 3 parts
    assert count_parts("я" * 66 + EMOJI + "я" * 66) == ucs2(134, 3)
    # 65 'я' + emoji + 67 'я' = 134 units: part 1 = 65 + 2 = 67, part 2 = 67 -> 2 parts
    assert count_parts("я" * 65 + EMOJI + "я" * 67) == ucs2(134, 2)


def test_emoji_with_gsm_text_is_ucs2() -> None:
    # 'a' * 68 + emoji = 70 units -> 1 part; one more 'a' -> 71 units:
    # part 1 = 67 'a', part 2 = 1 'a' + emoji = 3 -> 2 parts
    assert count_parts("a" * 68 + EMOJI) == ucs2(70, 1)
    assert count_parts("a" * 69 + EMOJI) == ucs2(71, 2)


# --- property: agree with a slow, obviously-correct greedy reference --------------------------


def _gsm_cost(ch: str) -> int | None:
    """Septets for ch via the codec itself, or None if ch is not (round-trippable) GSM-7."""
    try:
        encoded = ch.encode("gsm03.38")
    except UnicodeEncodeError:
        return None
    return len(encoded) if encoded.decode("gsm03.38") == ch else None


def _reference(text: str) -> tuple[Parts, list[str], list[int], int]:
    """Return (Parts, chunks, per-char costs, multipart limit) by a plain greedy split."""
    gsm_costs = [_gsm_cost(ch) for ch in text]
    costs: list[int]
    if all(c is not None for c in gsm_costs):
        encoding, single, multi = "GSM-7", 160, 153
        costs = [c for c in gsm_costs if c is not None]
    else:
        encoding, single, multi = "UCS-2", 70, 67
        costs = [len(ch.encode("utf-16-le", "surrogatepass")) // 2 for ch in text]
    total = sum(costs)
    if total <= single:
        return Parts(encoding, total, 1), [text], costs, single
    chunks: list[str] = []
    current, used = "", 0
    for ch, cost in zip(text, costs, strict=True):
        if used + cost > multi:
            chunks.append(current)
            current, used = "", 0
        current += ch
        used += cost
    chunks.append(current)
    return Parts(encoding, total, len(chunks)), chunks, costs, multi


_GSM_ALPHABET = "aZ0 .@£$¥èΔΩÇ\n" + EXTENSION_CHARS
_MIXED_ALPHABET = _GSM_ALPHABET + "яőç\x1b" + EMOJI + "🎉"


def _runs(alphabet: str) -> st.SearchStrategy[str]:
    # Runs of one repeated char (e.g. 152 'a' + '€' + ...) reach the exact straddle cases
    # that uniformly random texts almost never hit.
    run = st.tuples(st.sampled_from(alphabet), st.integers(min_value=1, max_value=160))
    return st.lists(run, max_size=5).map(lambda runs: "".join(ch * n for ch, n in runs))


_texts = st.one_of(
    st.text(alphabet=_GSM_ALPHABET, max_size=480),
    st.text(alphabet=st.sampled_from(_MIXED_ALPHABET) | st.characters(), max_size=240),
    _runs(_GSM_ALPHABET),
    _runs(_MIXED_ALPHABET),
)


@settings(max_examples=600)
@given(_texts)
def test_matches_greedy_reference(text: str) -> None:
    expected, chunks, costs, limit = _reference(text)
    assert count_parts(text) == expected
    # The greedy chunks rebuild the text and none exceeds the per-part limit.
    assert "".join(chunks) == text
    assert expected.parts >= 1
    pos = 0
    sizes: list[int] = []
    for chunk in chunks:
        sizes.append(sum(costs[pos : pos + len(chunk)]))
        pos += len(chunk)
    assert all(size <= limit for size in sizes)
    assert sum(sizes) == expected.units
    # Greedy: each cut was forced (the next character did not fit in the previous part).
    pos = 0
    for size, chunk in zip(sizes[:-1], chunks[:-1], strict=True):
        pos += len(chunk)
        assert size + costs[pos] > limit
