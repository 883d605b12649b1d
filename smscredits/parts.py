"""SMS message-part counting (GSM 03.38 7-bit vs UCS-2), pure Python.

A text is sent as GSM-7 when every character is in the GSM 03.38 default alphabet or its
extension table, otherwise as UCS-2 (UTF-16).  Long texts are split into concatenated parts
whose user-data header eats some room: 160 -> 153 septets (GSM-7), 70 -> 67 code units (UCS-2).
A two-unit character (GSM escape pair, UTF-16 surrogate pair) is never split across parts,
so the split is computed greedily, part by part, whenever such characters are present.

Findings about the ``gsm0338`` codec (version 1.1.0), checked by encoding every code point:
* It is strict, not lossy, for letters: "ç" (U+00E7) raises UnicodeEncodeError instead of being
  folded onto "Ç" (0x09); the Spanish single-shift table that does contain "ç" is only used when
  explicitly requested, never by the registered "gsm03.38" codec.  No other look-alike folding
  (e.g. Greek capital Alpha -> "A") happens either.
* The single lossy mapping is ESC (U+001B): it encodes to b"\\x1b", which decodes to "" (a lone
  escape prefix), and "\\x1b" + "e" would even decode as "€".  It is not a sendable character,
  so the round-trip check below rejects it and a text containing it goes out as UCS-2.
* Its encoder is a pure-Python loop (~30 µs for 160 chars), so we ask it once, at import, for the
  cost of each character and then encode with the C ``codecs.charmap_encode`` (~2 µs).
"""

from __future__ import annotations

import codecs
import contextlib
from dataclasses import dataclass
from functools import lru_cache

import gsm0338  # noqa: F401  (importing registers the "gsm03.38" codec)

__all__ = ["Parts", "count_parts"]

_CODEC = "gsm03.38"
_ESC = 0x1B
_GSM_SINGLE, _GSM_MULTI = 160, 153
_UCS2_SINGLE, _UCS2_MULTI = 70, 67


@dataclass(frozen=True, slots=True)
class Parts:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets for GSM-7 (extension chars count 2), UTF-16 code units for UCS-2
    parts: int  # number of SMS parts, >= 1 (an empty text is 1 part)


def _build_gsm_map() -> dict[int, bytes]:
    """Map each GSM-7 character's code point to its encoded bytes (1 or 2 septets).

    The codec's encoding map is derived from its decoding map, so decoding every single byte
    and every escape + byte pair enumerates all encodable characters; ESC is added by hand
    because decoding never yields it.  A character is kept only if it round-trips.
    """
    candidates = {"\x1b"}
    for b in range(0x100):
        for raw in (bytes((b,)), bytes((_ESC, b))):
            with contextlib.suppress(UnicodeDecodeError):
                candidates.add(raw.decode(_CODEC))
    table: dict[int, bytes] = {}
    for ch in candidates:
        if len(ch) != 1:
            continue
        try:
            encoded = ch.encode(_CODEC)
        # TypeError: if two codes ever decoded to one char, codecs.make_encoding_map stores None
        # for it and the codec's encoder crashes instead of raising UnicodeEncodeError.
        except (UnicodeEncodeError, TypeError):
            continue
        if encoded.decode(_CODEC) == ch:
            table[ord(ch)] = encoded
    return table


_GSM_MAP = _build_gsm_map()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# A bulk campaign sends one text to many numbers: each distinct text is counted once.
@lru_cache(maxsize=4096)
def count_parts(text: str) -> Parts:
    """Return the encoding, size in septets / code units, and number of SMS parts of ``text``."""
    try:
        septets = codecs.charmap_encode(text, "strict", _GSM_MAP)[0]
    except UnicodeEncodeError:
        return _count_ucs2(text)
    units = len(septets)
    if units <= _GSM_SINGLE:
        return Parts("GSM-7", units, 1)
    if units == len(text):  # no escape pairs: every part is full, plain division is exact
        return Parts("GSM-7", units, _ceil_div(units, _GSM_MULTI))
    # Greedy walk over the encoded septets; ESC only ever appears as an escape prefix since
    # the ESC character itself is excluded from _GSM_MAP.
    parts, used, i = 1, 0, 0
    while i < units:
        cost = 2 if septets[i] == _ESC else 1
        if used + cost > _GSM_MULTI:
            parts, used = parts + 1, 0
        used += cost
        i += cost
    return Parts("GSM-7", units, parts)


def _count_ucs2(text: str) -> Parts:
    # "surrogatepass": a lone surrogate in a Python str counts as one code unit instead of
    # raising; such unpaired code points are treated as ordinary single units.
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    if units <= _UCS2_SINGLE:
        return Parts("UCS-2", units, 1)
    if units == len(text):  # no surrogate pairs: plain division is exact
        return Parts("UCS-2", units, _ceil_div(units, _UCS2_MULTI))
    parts, used = 1, 0
    for ch in text:
        cost = 2 if ord(ch) > 0xFFFF else 1
        if used + cost > _UCS2_MULTI:
            parts, used = parts + 1, 0
        used += cost
    return Parts("UCS-2", units, parts)
