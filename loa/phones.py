"""Vietnamese mobile number normalisation and masking.

``normalize`` is called once per CSV row on million-row imports, so the hot
path is kept to a couple of precompiled regexes, string slicing and one
``phonenumbers`` type lookup (which dominates the cost).  Validity always comes
from ``phonenumbers`` metadata; the only table written by hand here is the
2018 prefix conversion, which ``phonenumbers`` no longer knows about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import phonenumbers
from phonenumbers import PhoneNumberType, carrier

__all__ = ["CARRIERS", "Phone", "PhoneError", "carrier_key", "normalize", "mask"]

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


def _national_significant_number(raw: str) -> str:
    """Strip separators, country code and trunk zero; reject foreign numbers."""
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
    if s.startswith("0"):
        s = s[1:]
    if not s or s[0] == "0" or len(s) > _MAX_DIGITS:
        raise PhoneError(INVALID)
    return s


def _strip_country_code(international: str) -> str:
    if not international.startswith(_CC_STR):
        raise PhoneError(FOREIGN)
    return international[2:]


@lru_cache(maxsize=4096)
def _classify(nsn: str) -> str:
    """Return the carrier name for a mobile NSN or raise PhoneError.

    Cached because imports often repeat numbers and number_type() is by far
    the most expensive step; keys are short strings, so the cache stays small.
    """
    num = phonenumbers.PhoneNumber(country_code=_CC, national_number=int(nsn))
    kind = phonenumbers.number_type(num)
    if kind not in _ACCEPTED_TYPES:
        raise PhoneError(_REJECT_REASONS.get(kind, NOT_MOBILE))
    # Validity was just established; skip name_for_number's re-validation.
    return carrier.name_for_valid_number(num, "en")


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
