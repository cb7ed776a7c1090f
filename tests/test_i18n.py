"""Languages: the report's page is Vietnamese unless the configuration says "en".

* Every string the code marks for translation has its Vietnamese, with the same
  placeholders, and the catalog holds nothing the code no longer asks for.
* Numbers, percentages and dates are written the Vietnamese way (84.126, 6,74 %, 17/08/2020).
* The page ``loa report --html``, ``/report`` and the digest write follows ``language``.
"""

from __future__ import annotations

import re
import string
from datetime import date
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from conftest import AREAS_CSV, write
from test_cli import invoke, ok, one_line_error, subscribers_csv
from test_htmlreport import GENERATED, world  # noqa: F401 - `world` is a fixture

from loa import i18n
from loa import report as rep
from loa import snapshots as snap
from loa.config import from_mapping
from loa.errors import ConfigError
from loa.htmlreport import render_html

LOA = Path(i18n.__file__).parent
KEYWORDS = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)}


def marked() -> dict[str | tuple[str, ...], list[str]]:
    """Every string marked for translation in loa/, with where it is."""
    found: dict[str | tuple[str, ...], list[str]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
            str(LOA), method_map=[("**.py", "python"), ("web/console/templates/**.html", "jinja2.ext:babel_extract")],
            keywords=KEYWORDS):
        found.setdefault(message, []).append(f"loa/{filename}:{lineno}")
    return found


def catalog(code: str) -> dict[str | tuple[str, ...], str | tuple[str, ...]]:
    with i18n.catalog_path(code).open("rb") as po:
        return {m.id: m.string for m in read_po(po, locale=code) if m.id}


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_marked_string_has_its_vietnamese_with_the_same_placeholders() -> None:
    code, vi = marked(), catalog("vi")
    assert len(code) > 50
    missing = {m: where for m, where in code.items() if not vi.get(m) or not all(vi[m])}
    assert missing == {}, "untranslated: add them to loa/locale/vi/LC_MESSAGES/loa.po"
    for message, translation in vi.items():
        sources = message if isinstance(message, tuple) else (message,)
        targets = translation if isinstance(translation, tuple) else (translation,)
        for target in targets:
            assert fields(target) == fields(sources[0]), (message, translation)
    assert set(vi) - set(code) == set(), "no longer in the code: remove them from the catalog"


def test_a_translation_that_drops_a_placeholder_is_caught() -> None:
    """The check above can fail: a wrong translation is seen."""
    assert fields("{event} sau tin nhắn") == fields("{event} after a message")
    assert fields("sau tin nhắn") != fields("{event} after a message")


def test_numbers_percentages_and_dates_in_each_language() -> None:
    vi, en = i18n.language("vi"), i18n.language("en")
    assert (vi.number(84126), en.number(84126)) == ("84.126", "84,126")
    assert (vi.percent(0.0674, 2), en.percent(0.0674, 2)) == ("6,74 %", "6.74%")
    assert (vi.date(date(2020, 8, 17)), en.date(date(2020, 8, 17))) == ("17/08/2020", "2020-08-17")
    assert (vi.signed(1.25, 1), vi.signed(-3, 0), en.signed(1250.5, 1)) == ("+1,2", "-3", "+1,250.5")
    assert vi.number(None) == vi.percent(None) == vi.date(None) == "—"
    assert i18n.language().code == "vi"
    assert vi.gettext("Population") == "Dân số" and en.gettext("Population") == "Population"
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        i18n.language("fr")


def test_the_page_is_vietnamese_by_default_and_english_on_request(world: tuple[rep.Report, snap.Summary]) -> None:  # noqa: F811
    report, summary = world
    vi = render_html(report, summary, generated_at=GENERATED)
    en = render_html(report, summary, generated_at=GENERATED, lang="en")
    assert '<html lang="vi">' in vi and '<html lang="en">' in en
    audience = f"{report.total.audience:,}"
    assert "," in audience                                              # thousands, to tell the two apart
    head_vi = vi.split("<script>", 1)[0]
    for text in ("Dân số", "Gửi thành công", "Không đến máy", "Theo quận/huyện", "Ghi chú",
                 f">{audience.replace(',', '.')}</b><span>đối tượng</span>", "dân số tính đến 17/08/2020"):
        assert text in head_vi, text
    for text in ("Population", "Delivered", "Per district", f">{audience}</b><span>audience</span>"):
        assert text in en, text
        assert text not in head_vi, text
    # the charts too: their titles, legends and the numbers plotly writes (its separators)
    assert '"separators": ",."' in vi and '"separators": ".,"' in en
    assert "Tỷ lệ cài đặt trên dân số, theo quận/huyện" in vi


def test_the_configured_language_is_followed_by_loa_report(workdir: Path, tmp_path: Path) -> None:
    ok(invoke(workdir, "init"))
    ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    ok(invoke(workdir, "import", "subscribers", str(subscribers_csv(tmp_path, 12))))
    write(workdir / "templates" / "sms" / "hi.j2", "Chào {{ subscriber.name }}\n")
    write(workdir / "campaigns" / "hi.toml", """
        name = "hi"
        channels = ["sms"]
        [segment]
        areas = ["Sơn La"]
        [sms]
        template = "sms/hi.j2"
        [window]
        start = "00:00"
        end = "24:00"
    """)
    ok(invoke(workdir, "campaigns", "run", "hi"))
    page = tmp_path / "hi.html"
    ok(invoke(workdir, "report", "hi", "--html", str(page)))
    assert '<html lang="vi">' in page.read_text(encoding="utf-8")
    config = workdir / "config.toml"
    config.write_text('language = "en"\n' + config.read_text(encoding="utf-8"), encoding="utf-8")
    ok(invoke(workdir, "report", "hi", "--html", str(page)))
    assert '<html lang="en">' in page.read_text(encoding="utf-8")
    config.write_text(re.sub(r'language = "en"', 'language = "fr"', config.read_text(encoding="utf-8")),
                      encoding="utf-8")
    one_line_error(invoke(workdir, "report", "hi"), "config.toml: language: must be a language loa speaks",
                   '"vi" or "en", got \'fr\'')


def test_the_configuration_defaults_to_vietnamese() -> None:
    assert from_mapping({}).language == "vi"
    assert from_mapping({"language": "en"}).language == "en"
    with pytest.raises(ConfigError, match="language"):
        from_mapping({"language": 1})
