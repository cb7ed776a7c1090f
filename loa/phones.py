"""Vietnamese mobile number normalisation and masking.

``normalize`` is called once per CSV row on million-row imports, so the hot
path is kept to a couple of precompiled regexes, string slicing and a dict
lookup: a number's type and carrier are asked of ``phonenumbers`` once per
prefix, for as many leading digits as its own metadata says decide them.
Validity always comes from ``phonenumbers`` metadata; the only table written by
hand here is the 2018 prefix conversion, which ``phonenumbers`` no longer knows
about.
"""

from __future__ import annotations

import re
import re._constants as _sre_c
import re._parser as _sre
from dataclasses import dataclass
from typing import Any, Final

import phonenumbers
from phonenumbers import PhoneNumberType, carrier
from phonenumbers import carrierdata as carrier_data

__all__ = ["CARRIERS", "Phone", "PhoneError", "carrier_key", "e164_and_carrier", "mask", "normalize"]

_CC: Final = 84
_CC_STR: Final = "84"

# Reasons are part of the API: imports group rejected rows by them.
EMPTY: Final = "empty"
INVALID: Final = "not a valid Vietnamese number"
LANDLINE: Final = "landline number, not a mobile"
SERVICE: Final = "toll-free or premium service number (1800/1900)"
NOT_MOBILE: Final = "not a mobile number"
FOREIGN: Final = "not a Vietnamese mobile number"

# Separators people and spreadsheets put into numbers: whitespace (incl. NBSP),
# dots, ASCII and Unicode dashes, parentheses (e.g. "+84 (0) 912 ...").
_SEPARATORS: Final = re.compile(r"[\s.\-\u2010-\u2015()]+")
# ASCII-only digits: int() would otherwise accept e.g. Arabic-Indic digits.
# Also the "number-shaped" test for mask().
_SHAPE: Final = re.compile(r"\+?[0-9]+", re.ASCII)
_MASK_MIN_LEN: Final = 11  # 5 shown + at least 3 hidden + 3 shown

# No country's significant number is longer; also caps int() on junk input.
_MAX_DIGITS: Final = 17

# Sept 2018 conversion of 11-digit mobile numbers to 10 digits: the old
# three-digit prefix (after the trunk 0) becomes a two-digit one and the
# 7-digit subscriber part is kept.  Old numbers are invalid in current
# phonenumbers metadata, so they must be converted before validation.
_OLD_PREFIXES: Final[dict[str, str]] = {
    # MobiFone
    "120": "70", "121": "79", "122": "77", "126": "76", "128": "78",
    # VinaPhone
    "123": "83", "124": "84", "125": "85", "127": "81", "129": "82",
    # Viettel
    "162": "32", "163": "33", "164": "34", "165": "35",
    "166": "36", "167": "37", "168": "38", "169": "39",
    # Vietnamobile
    "186": "56", "188": "58",
    # Gmobile
    "199": "59",
}
_OLD_NSN_LEN: Final = 10  # old prefix (3) + subscriber (7), without trunk 0

_ACCEPTED_TYPES: Final = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
_REJECT_REASONS: Final[dict[int, str]] = {
    PhoneNumberType.FIXED_LINE: LANDLINE,
    PhoneNumberType.TOLL_FREE: SERVICE,
    PhoneNumberType.PREMIUM_RATE: SERVICE,
    PhoneNumberType.UNKNOWN: INVALID,
}


# The carriers of Vietnamese mobile ranges, as configuration names them (prices per carrier),
# and as phonenumbers names them (subscribers.carrier).
CARRIERS: Final[dict[str, str]] = {
    "viettel": "Viettel", "vinaphone": "Vinaphone", "mobifone": "MobiFone", "vietnamobile": "Vietnamobile",
    "gmobile": "G-Mobile", "itel": "Indochina Telecom", "reddi": "Reddi",
}
_CARRIER_KEYS: Final = {re.sub(r"[^a-z0-9]", "", name.lower()): key for key, name in CARRIERS.items()}


def carrier_key(name: str) -> str:
    """The configuration's name of a carrier ("G-Mobile" -> "gmobile"); "" for none known."""
    folded = re.sub(r"[^a-z0-9]", "", (name or "").lower())
    return folded if folded in CARRIERS else _CARRIER_KEYS.get(folded, "")


class PhoneError(ValueError):
    """A raw value that is not a usable Vietnamese mobile number.

    ``str(err)`` and ``err.reason`` are the human reason only; the raw number
    is deliberately left out so the exception can be logged as-is.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Phone:
    """A normalised Vietnamese mobile number.

    ``carrier`` is the operator that was originally assigned the range (numbers
    are portable since 2018), or "" when phonenumbers does not know it.
    ``converted_from`` is the old 11-digit number in E.164 form when the input
    used a pre-2018 prefix, else None.
    """

    e164: str
    carrier: str
    converted_from: str | None


def normalize(raw: str) -> Phone:
    """Normalise one raw phone value to a Vietnamese mobile number.

    Raises PhoneError with a human reason for empty, malformed, foreign,
    landline, 1800/1900 and otherwise invalid numbers.
    """
    nsn = _national_significant_number(raw)
    converted_from = None
    if len(nsn) == _OLD_NSN_LEN and nsn[:3] in _OLD_PREFIXES:
        converted_from = "+" + _CC_STR + nsn
        nsn = _OLD_PREFIXES[nsn[:3]] + nsn[3:]
    operator = _classify(nsn)
    return Phone("+" + _CC_STR + nsn, operator, converted_from)


def e164_and_carrier(raw: str) -> tuple[str, str]:
    """``normalize(raw)``'s E.164 number and carrier, for imports that read a million of them.

    The value is parsed once, and its type and carrier come from ``phonenumbers``' own
    metadata, asked once per prefix (``_classify``); no object is built per number.
    Raises PhoneError as ``normalize`` does.
    """
    nsn = _national_significant_number(raw)
    if len(nsn) == _OLD_NSN_LEN and (new := _OLD_PREFIXES.get(nsn[:3])) is not None:
        nsn = new + nsn[3:]
    return "+" + _CC_STR + nsn, _classify(nsn)


def _national_significant_number(raw: str) -> str:
    """Strip separators, country code and trunk zero; reject foreign numbers."""
    if raw.isdigit() and raw.isascii():   # most cells: digits only, nothing to strip or check
        s = raw
    else:
        s = _SEPARATORS.sub("", raw) if raw else ""
        if not s:
            raise PhoneError(EMPTY)
        if not _SHAPE.fullmatch(s):
            raise PhoneError(INVALID)
    if s[0] == "+":
        s = _strip_country_code(s[1:])
    elif s.startswith("00"):
        s = _strip_country_code(s[2:])
    elif s.startswith(_CC_STR) and len(s) in (11, 12):
        # "84" + 9-digit mobile or + 10-digit old mobile.  A bare 9-digit
        # "84..." is a VinaPhone 084 number whose leading zero was dropped.
        s = s[2:]
    # Trunk zero, also the common "+84 (0)912..." mistake after a country code.
    s = s.removeprefix("0")
    if not s or s[0] == "0" or len(s) > _MAX_DIGITS:
        raise PhoneError(INVALID)
    return s


def _strip_country_code(international: str) -> str:
    if not international.startswith(_CC_STR):
        raise PhoneError(FOREIGN)
    return international[2:]


def _classify(nsn: str) -> str:
    """Return the carrier name for a mobile NSN or raise PhoneError.

    The answer depends only on the number's first ``_PREFIX_DIGITS`` digits and its
    length (see ``_determining_digits``), so it is looked up once per such prefix: a
    million-number import asks ``phonenumbers`` a few thousand times, not a million.
    """
    key = nsn[:_PREFIX_DIGITS] + _LENGTH_TAG[len(nsn)] if _PREFIX_DIGITS else nsn
    found = _BY_PREFIX.get(key)
    if found is None:
        found = _lookup(nsn)
        if _PREFIX_DIGITS or len(_BY_PREFIX) < 4096:   # by whole number: keep the cache small
            _BY_PREFIX[key] = found
    if isinstance(found, PhoneError):
        raise PhoneError(found.reason)
    return found


def _lookup(nsn: str) -> str | PhoneError:
    num = phonenumbers.PhoneNumber(country_code=_CC, national_number=int(nsn))
    kind = phonenumbers.number_type(num)
    if kind not in _ACCEPTED_TYPES:
        return PhoneError(_REJECT_REASONS.get(kind, NOT_MOBILE))
    # Validity was just established; skip name_for_number's re-validation.
    return carrier.name_for_valid_number(num, "en")


def _determining_digits() -> int:
    """How many leading digits (with the length) decide a Vietnamese number's type and carrier.

    Read from phonenumbers' own metadata: the number-type patterns (a pattern's digits after
    its last constrained position are free) and the carrier prefixes.  0 when a pattern has
    a shape this cannot bound: then each number is looked up on its own.
    """
    meta = phonenumbers.PhoneMetadata.metadata_for_region("VN")
    descs = [getattr(meta, name, None) for name in (
        "general_desc", "fixed_line", "mobile", "toll_free", "premium_rate", "shared_cost", "personal_number",
        "voip", "pager", "uan", "voicemail")]
    widest = 0
    for desc in descs:
        pattern = desc.national_number_pattern if desc is not None else None
        if pattern:
            digits = _constrained_prefix(pattern)
            if digits is None:
                return 0
            widest = max(widest, digits)
    carriers = [len(k) - len(_CC_STR) for k in carrier_data.CARRIER_DATA if k.startswith(_CC_STR)]
    return max(widest, *carriers, 1)


def _constrained_prefix(pattern: str) -> int | None:
    """The length of the longest prefix a full match of ``pattern`` constrains, or None if unbounded."""
    states: set[tuple[int | None, int]] | None = {(0, 0)}
    states = _walk(_sre.parse(pattern), states)
    return None if not states else max(sig for _, sig in states)


def _walk(items: Any, states: set[tuple[int | None, int]] | None) -> set[tuple[int | None, int]] | None:
    for op, arg in items:
        if states is None:
            return None
        if op is _sre_c.SUBPATTERN:
            states = _walk(arg[-1], states)
        elif op is _sre_c.BRANCH:
            out: set[tuple[int | None, int]] = set()
            for alternative in arg[1]:
                got = _walk(alternative, states)
                if got is None:
                    return None
                out |= got
            states = out
        elif op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            low, high, sub = arg
            if _any_digit(sub):
                states = {(None if pos is None or low != high else pos + low, sig) for pos, sig in states}
            elif low == high and low <= 8:
                for _ in range(low):
                    states = _walk(sub, states)
            else:
                return None
        elif op in (_sre_c.LITERAL, _sre_c.IN):
            free = op is _sre_c.IN and _any_digit([(op, arg)])
            if not free and any(pos is None for pos, _ in states):
                return None   # a constrained digit after a run of free ones of varying length
            states = {(None if pos is None else pos + 1, sig if free else pos + 1) for pos, sig in states}  # type: ignore[operator]
        else:
            return None
    return states


def _any_digit(items: Any) -> bool:
    return list(items) == [(_sre_c.IN, [(_sre_c.CATEGORY, _sre_c.CATEGORY_DIGIT)])]


_PREFIX_DIGITS: Final = _determining_digits()
_BY_PREFIX: dict[str, str | PhoneError] = {}
_LENGTH_TAG: Final = tuple(f"/{n}" for n in range(_MAX_DIGITS + 1))


def mask(e164: str) -> str:
    """Mask a number for logs: "+84912345678" -> "+8491****678".

    Only number-shaped strings of at least 11 characters keep their first 5 and
    last 3 characters, so at least 3 digits are always hidden; anything shorter
    or odd-looking (maybe a raw value with a name in it) becomes all stars.
    """
    s = e164.strip() if isinstance(e164, str) else ""
    if len(s) < _MASK_MIN_LEN or not _SHAPE.fullmatch(s):
        return "*" * max(len(s), 3)
    return s[:5] + "*" * (len(s) - 8) + s[-3:]
