"""Languages: what officials read is Vietnamese unless the configuration says otherwise.

Messages are gettext catalogs (``loa/locale/LANG/LC_MESSAGES/loa.po``), read with Babel when
first needed: no compiled ``.mo`` file and no build step.  The source strings are English,
so English needs no catalog.  Numbers, percentages and dates follow the language's own
conventions (Babel's CLDR data): ``84.126``, ``6,74 %`` and ``17/08/2020`` in Vietnamese,
``84,126``, ``6.74%`` and ``2020-08-17`` in English.

``tests/test_i18n.py`` fails when a string marked for translation has no Vietnamese.
"""

from __future__ import annotations

import functools
import gettext
from dataclasses import dataclass
from datetime import date
from io import BytesIO
from pathlib import Path

from babel.dates import format_date
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from babel.support import Translations

LANGUAGES = ("vi", "en")
DEFAULT = "vi"
LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "loa"
DASH = "—"


def catalog_path(code: str) -> Path:
    return LOCALE_DIR / code / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def _translations(code: str) -> gettext.NullTranslations:
    if code == "en":
        return gettext.NullTranslations()
    with catalog_path(code).open("rb") as po:
        catalog = read_po(po, locale=code, domain=DOMAIN)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


@dataclass(frozen=True)
class Language:
    """One language's messages and formats: ``t = language("vi"); _ = t.gettext``."""

    code: str = DEFAULT

    def __post_init__(self) -> None:
        if self.code not in LANGUAGES:
            raise ValueError(f"unknown language {self.code!r} (known: {', '.join(LANGUAGES)})")

    def gettext(self, message: str) -> str:
        return _translations(self.code).gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return _translations(self.code).ngettext(singular, plural, n)

    def number(self, value: float | None, digits: int = 0) -> str:
        """``84.126`` / ``84,126``; ``—`` for none."""
        if value is None:
            return DASH
        pattern = "#,##0" + ("." + "0" * digits if digits else "")
        return format_decimal(value, format=pattern, locale=self.code)

    def money(self, vnd: int | None) -> str:
        """An amount in đồng: ``84.126 ₫`` / ``₫84,126``; ``—`` for none."""
        if vnd is None:
            return DASH
        return format_currency(vnd, "VND", locale=self.code)

    def signed(self, value: float, digits: int = 1) -> str:
        """``+1,5`` / ``+1.5``: a change, with its sign."""
        pattern = "+#,##0" + ("." + "0" * digits if digits else "") + ";-#,##0" + ("." + "0" * digits if digits else "")
        return format_decimal(value, format=pattern, locale=self.code)

    def percent(self, share: float | None, digits: int = 1) -> str:
        """A share as a percentage: ``6,74 %`` / ``6.74%``; ``—`` for none."""
        if share is None:
            return DASH
        return self.number(100 * share, digits) + (" %" if self.code == "vi" else "%")

    def date(self, day: date | None) -> str:
        if day is None:
            return DASH
        return format_date(day, "dd/MM/yyyy" if self.code == "vi" else "yyyy-MM-dd", locale=self.code)

    @property
    def list_separator(self) -> str:
        """Between two numbers, as in an interval: "; " where the decimal mark is a comma."""
        return "; " if self.code == "vi" else ", "

    @property
    def separators(self) -> str:
        """plotly's ``layout.separators``: the decimal mark, then the thousands separator."""
        return ",." if self.code == "vi" else ".,"

    @property
    def d3_date(self) -> str:
        """A chart's date axis and hover format."""
        return "%d/%m/%Y" if self.code == "vi" else "%Y-%m-%d"


def language(code: str | None = None) -> Language:
    return Language(code or DEFAULT)


__all__ = ["DEFAULT", "LANGUAGES", "Language", "catalog_path", "language"]
