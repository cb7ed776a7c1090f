"""SMS text facts: GSM-7 vs UCS-2, length units, parts, "không dấu" form.

Rules (3GPP TS 23.038 / 23.040):
* GSM-7 if every character is in the default alphabet or its extension table;
  extension characters cost 2 septets (ESC + char).  Otherwise UCS-2, counted
  in UTF-16 code units (what handsets actually send).
* One part holds 160 septets / 70 units; a concatenated message loses 7 septets
  / 3 units per part to the UDH, leaving 153 / 67.
* Parts are packed greedily and never split an escape sequence or a surrogate
  pair, so the part count can exceed ceil(units / 153) near boundaries.
* Empty text is 0 units in 1 part: a sent message is always at least one part.

All functions apply :func:`nfc` first, so NFD input (common from macOS and some web
forms) measures and splits exactly like precomposed input, and a lone surrogate is
measured as the U+FFFD it is sent as.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from unidecode import unidecode

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "SmsInfo",
    "is_gsm7",
    "measure",
    "nfc",
    "split_parts",
    "unaccent",
]

GSM7: Final = "GSM-7"
UCS2: Final = "UCS-2"

# Default alphabet, in code order, minus 0x1B (ESC), which is the escape to the
# extension table and not a character in its own right.
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
) - {"\x1b"}
# Extension table: each is sent as ESC + char, i.e. 2 septets.
GSM7_EXTENSION: Final = frozenset("^{}\\[~]|€\f")

_SINGLE: Final = {GSM7: 160, UCS2: 70}
_MULTI: Final = {GSM7: 153, UCS2: 67}


@dataclass(frozen=True, slots=True)
class SmsInfo:
    """How an SMS text is sent.

    ``units`` are septets for GSM-7 and UTF-16 code units for UCS-2.
    """

    encoding: str
    units: int
    parts: int


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def nfc(text: str) -> str:
    """The text as it is sent: NFC, with every lone surrogate as U+FFFD.

    A lone surrogate (from an attribute decoded with ``surrogateescape``, or a JSON or
    Jinja ``"\\ud800"`` escape) has no UTF-16 or GSM-7 encoding, so a gateway would fail
    on it after the row was marked ``sending``; a pair split into two code points is
    joined into the character it stands for.
    """
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return unicodedata.normalize("NFC", text)


_GSM7_ALL: Final = GSM7_BASIC | GSM7_EXTENSION


def is_gsm7(text: str) -> bool:
    """True if text (taken as is, no NFC) fits the GSM-7 alphabet + extension."""
    return _GSM7_ALL.issuperset(text)


def measure(text: str) -> SmsInfo:
    """Encoding, length units and part count of text after NFC."""
    t = nfc(text)
    chars = set(t)
    # Fast path (most messages): every character costs one unit, so parts are a division.
    if _GSM7_ALL.issuperset(chars):
        if chars.isdisjoint(GSM7_EXTENSION):
            return _uniform(GSM7, len(t))
    elif max(t) <= "\uffff":
        return _uniform(UCS2, len(t))
    encoding, weights = _weights(t)
    return SmsInfo(encoding, sum(weights), len(_part_bounds(encoding, weights)))


def _uniform(encoding: str, units: int) -> SmsInfo:
    if units <= _SINGLE[encoding]:
        return SmsInfo(encoding, units, 1)
    return SmsInfo(encoding, units, -(-units // _MULTI[encoding]))


def split_parts(text: str) -> list[str]:
    """The NFC text cut into the parts it is sent as; "".join() restores it.

    Always consistent with measure(): len(split_parts(t)) == measure(t).parts.
    """
    t = nfc(text)
    encoding, weights = _weights(t)
    return [t[a:b] for a, b in _part_bounds(encoding, weights)]


def _weights(t: str) -> tuple[str, list[int]]:
    """Encoding and per-character cost in that encoding's units."""
    if is_gsm7(t):
        return GSM7, [2 if ch in GSM7_EXTENSION else 1 for ch in t]
    # Outside the BMP a character is a surrogate pair: 2 UTF-16 code units.
    return UCS2, [2 if ord(ch) > 0xFFFF else 1 for ch in t]


def _part_bounds(encoding: str, weights: list[int]) -> list[tuple[int, int]]:
    """[start, end) character ranges of each part, packed greedily.

    Working per character (not per unit) is what keeps an escape sequence or
    surrogate pair whole: a 2-unit character that does not fit moves entirely
    to the next part.
    """
    n = len(weights)
    if sum(weights) <= _SINGLE[encoding]:
        return [(0, n)]
    limit = _MULTI[encoding]
    bounds: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, w in enumerate(weights):
        if used + w > limit:
            bounds.append((start, i))
            start, used = i, 0
        used += w
    bounds.append((start, n))
    return bounds


def unaccent(text: str) -> str:
    """The "không dấu" form of text: pure GSM-7, newlines kept.

    Vietnamese without diacritics is how most bulk SMS is sent: it fits 160
    septets per part instead of 70 units.  Letters lose all marks (even the few
    GSM-7 has, like "à", so words stay consistent: "là" -> "la" like "lá").
    """
    return "".join(_unaccent_char(ch) for ch in nfc(text))


@lru_cache(maxsize=2048)
def _unaccent_char(ch: str) -> str:
    # Plain ASCII that GSM-7 can carry, and non-letter GSM-7 symbols such as
    # "€" or "£", are kept: transliterating "€" to "EUR" only costs more.
    if ch in GSM7_EXTENSION or (ch in GSM7_BASIC and not _is_accented_letter(ch)):
        return ch
    if ch == "\t":
        return " "
    # unidecode handles đ -> d, smart quotes, dashes, ellipsis and NBSP.  Its
    # output is ASCII, but not all ASCII is GSM-7: "`" has no GSM-7 code and
    # control characters other than LF/CR/FF would be sent as garbage.
    out = unidecode(ch).replace("`", "'").replace("\t", " ")
    return "".join(c for c in out if c in GSM7_BASIC or c in GSM7_EXTENSION)


def _is_accented_letter(ch: str) -> bool:
    return ch.isalpha() and not ch.isascii()
