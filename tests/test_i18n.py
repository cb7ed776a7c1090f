"""Languages: the report's page is Vietnamese unless the configuration says "en".

* Every string the code marks for translation has its Vietnamese, with the same
  placeholders, and the catalog holds nothing the code no longer asks for.
* Numbers, percentages and dates are written the Vietnamese way (84.126, 6,74 %, 17/08/2020).
* The page ``loa report --html``, ``/report`` and the digest write follows ``language``.
* The engine's errors that reach an official (:class:`loa.errors.Text`) are said in the
  reader's language: the console's user's, the API client's ``Accept-Language``.
"""

from __future__ import annotations

import pickle
import re
import string
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from conftest import AREAS_CSV, write
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from test_cli import invoke, ok, one_line_error, subscribers_csv
from test_htmlreport import GENERATED, world  # noqa: F401 - `world` is a fixture

from loa import auth, i18n, lifecycle
from loa import report as rep
from loa import snapshots as snap
from loa.campaign import load_one
from loa.config import Config, from_mapping
from loa.errors import CampaignError, ConfigError, LoaError, Text
from loa.htmlreport import render_html

LOA = Path(i18n.__file__).parent
KEYWORDS = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2), "Text": None}   # Text: loa.errors


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


def test_the_rejects_file_of_loa_import_follows_the_configured_language(workdir: Path, tmp_path: Path) -> None:
    """Its columns stay the same words; the reason is said in the configuration's language."""
    ok(invoke(workdir, "init"))
    ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    people = write(tmp_path / "people.csv", "phone,area\n0912345678,Atlantis\n02438123456,\n0913000001,\n")
    ok(invoke(workdir, "import", "subscribers", str(people)))
    rejects = tmp_path / "people.rejects.csv"
    assert rejects.read_text(encoding="utf-8").splitlines() == [
        "line,column,reason,phone,area",
        "2,area,không có địa bàn nào có mã hoặc tên 'Atlantis',0912345678,Atlantis",
        "3,phone,\"số cố định, không phải số di động\",02438123456,"]
    config = workdir / "config.toml"
    config.write_text('language = "en"\n' + config.read_text(encoding="utf-8"), encoding="utf-8")
    ok(invoke(workdir, "import", "subscribers", str(people)))
    assert rejects.read_text(encoding="utf-8").splitlines()[1:] == [
        "2,area,no area with code or name 'Atlantis',0912345678,Atlantis",
        "3,phone,\"landline number, not a mobile\",02438123456,"]


def test_every_reason_the_phone_parser_gives_is_in_the_catalog() -> None:
    from loa import importer, phones

    given = {phones.EMPTY, phones.INVALID, phones.LANDLINE, phones.SERVICE, phones.NOT_MOBILE, phones.FOREIGN}
    assert {str(t) for t in importer.PHONE_REASONS} == given
    vi = i18n.language("vi")
    assert importer.phone_reason(phones.PhoneError(phones.LANDLINE)).in_language(vi) == "số cố định, không phải số di động"


def test_the_configuration_defaults_to_vietnamese() -> None:
    assert from_mapping({}).language == "vi"
    assert from_mapping({"language": "en"}).language == "en"
    with pytest.raises(ConfigError, match="language"):
        from_mapping({"language": 1})


# -- the engine's errors, in the reader's language ---------------------------------------------

def test_the_scan_finds_the_engines_error_sentences() -> None:
    """``Text("...")`` literals are in the catalog check above: a new one without Vietnamese fails it."""
    code = marked()
    for message in ("wrong user name or password",
                    ("campaign {name} is {state}: only a campaign that is {allowed} can be {done}"),
                    ("campaign {name}: its audience is empty, so there is no message to test; "
                     "name a subscriber with --subscriber PHONE")):
        assert any(where.startswith("loa/") for where in code[message]), message


def test_a_text_is_english_as_a_string_and_vietnamese_when_said_so() -> None:
    vi, en = i18n.language("vi"), i18n.language("en")
    text = Text("{problem} (and {more:n} more problem(s); run `loa campaigns validate`)",
                problem=Text("wrong user name or password"), more=84126)
    assert str(text) == text == "wrong user name or password (and 84,126 more problem(s); run `loa campaigns validate`)"
    assert text.in_language(en) == str(text)
    assert text.in_language(vi) == ("sai tên người dùng hoặc mật khẩu (và 84.126 lỗi khác; "
                                    "chạy `loa campaigns validate` để xem)")
    assert pickle.loads(pickle.dumps(text)).in_language(vi) == text.in_language(vi)
    # an error keeps its English for logs and the CLI, and says itself in a language on request
    with pytest.raises(lifecycle.LifecycleError) as refused:
        lifecycle.transition("campaign", "hi", "draft", "pause")
    assert str(refused.value) == "campaign hi is draft: only a campaign that is active can be paused"
    assert refused.value.localized(vi) == ("chiến dịch hi đang ở trạng thái bản nháp: chỉ chiến dịch ở trạng thái "
                                           "đang chạy mới có thể tạm dừng")
    with pytest.raises(lifecycle.LifecycleError) as refused:
        lifecycle.transition("campaign", "hi", "draft", "resume")
    assert refused.value.localized(vi).endswith("chỉ chiến dịch ở trạng thái tạm dừng mới có thể tiếp tục")
    problems = CampaignError([Text("no user named {name!r}", name="an"), "sms: a plain sentence"])
    assert str(problems) == "no user named 'an' (and 1 more problem(s); run `loa campaigns validate`)"
    assert problems.localized(vi).startswith("không có người dùng nào tên 'an' (và 1 lỗi khác")
    assert LoaError("an English line").localized(vi) == "an English line"      # not a Text: as it is
    # a folder taken out of a problem's parameters: still a Text; out of its sentence: plain text
    where = Text("{path}: {reason}", path="/tmp/x/hi.toml", reason=Text("start is after end"))
    short = where.replace("/tmp/x/", "")
    assert short == "hi.toml: start is after end" and short.in_language(vi) == "hi.toml: ngày bắt đầu sau ngày kết thúc"
    assert not isinstance(where.replace(": ", " - "), Text) and where.replace("nothing", "x") is where


@pytest.mark.parametrize(("header", "code"), [
    (None, "en"), ("", "en"), ("vi", "vi"), ("vi-VN,vi;q=0.9,en-US;q=0.8,en;q=0.7", "vi"),
    ("en-US,en;q=0.9,vi;q=0.8", "en"), ("en;q=0.5, vi", "vi"), ("vi;q=0.4, en;q=0.6", "en"),
    ("fr-FR, vi;q=0.3", "vi"), ("vi;q=0, en", "en"), ("vi;q=0", "en"), ("*", "en"), ("VI-vn", "vi"),
    ("vi;q=nonsense, en;q=0.1", "en"), ("de, fr;q=0.9", "en"),
])
def test_accept_language_is_ranked_by_its_q_values(header: str | None, code: str) -> None:
    from loa.web.errors import language_of

    assert language_of(header) == code


@pytest.fixture
def api(engine: Engine, workdir: Path, config: Config) -> Iterator[TestClient]:
    """The world of ``test_api``, with ``mocchau`` (Mộc Châu) planned and active."""
    from test_api import add_campaign
    from test_digest import add_world

    from loa.plan import plan_run
    from loa.web import Web

    add_world(engine, workdir)
    add_campaign(workdir, "mocchau", "Huyện Mộc Châu")
    plan_run(engine, config, load_one(config.campaigns_dir, "mocchau"))
    web = Web(engine, config)
    with TestClient(web, raise_server_exceptions=False) as client:
        yield client
    web.pool.close()


def said(r: Any, status: int, code: str) -> str:
    body = r.json()
    assert (r.status_code, body["error"]["code"]) == (status, code), body
    return str(body["error"]["message"])


VI = {"Accept-Language": "vi-VN,vi;q=0.9,en;q=0.8"}
EN = {"Accept-Language": "en-US,en;q=0.9,vi;q=0.8"}


def test_the_api_answers_errors_in_vietnamese_when_the_client_ranks_it_first(engine: Engine,
                                                                             api: TestClient) -> None:
    _, secret = auth.create_key(engine, "os:test", "operator")
    operator = {"Authorization": f"Bearer {secret}"}
    assert api.post("/api/v1/campaigns/mocchau/pause", json={"reason": "sai"}, headers=operator).status_code == 200
    again = "/api/v1/campaigns/mocchau/pause"
    assert said(api.post(again, json={"reason": "x"}, headers=operator | VI), 409, "conflict") == (
        "chiến dịch mocchau đang ở trạng thái tạm dừng: chỉ chiến dịch ở trạng thái đang chạy mới có thể tạm dừng")
    english = "campaign mocchau is paused: only a campaign that is active can be paused"
    assert said(api.post(again, json={"reason": "x"}, headers=operator | EN), 409, "conflict") == english
    assert said(api.post(again, json={"reason": "x"}, headers=operator), 409, "conflict") == english
    # the role, the missing key and a missing campaign: the same codes, in either language
    resume = "/api/v1/campaigns/mocchau/resume"
    assert said(api.post(resume, headers=operator | VI), 403, "forbidden").startswith(
        "vai trò người vận hành không được phép thực hiện campaigns.resume: cần vai trò người phê duyệt trở lên")
    assert said(api.post(resume, headers=operator | EN), 403, "forbidden").startswith(
        "campaigns.resume is not allowed for role operator: it needs approver or above")
    assert said(api.get("/api/v1/campaigns", headers=VI), 401, "unauthorized") == (
        "cần có khóa API: Authorization: Bearer loa_...")
    assert said(api.get("/api/v1/campaigns", headers={"Authorization": "Bearer nope"} | VI), 401,
                "unauthorized") == "không phải khóa API của loa (loa_XXXXXXXX_...)"
    assert said(api.get("/api/v1/campaigns", headers={"Authorization": "Bearer nope"} | EN), 401,
                "unauthorized") == "not an API key of loa (loa_XXXXXXXX_...)"
    assert said(api.post("/api/v1/campaigns/nosuch/pause", json={"reason": "x"}, headers=operator | VI), 404,
                "not_found") == ("không có chiến dịch nào tên 'nosuch' (một chiến dịch chỉ được biết đến sau khi "
                                "đã chạy)")
    # a definition that does not validate: each problem said in the client's language, no server path
    bad = 'name = "hi"\nchannels = ["fax"]\nholdout = 2\n'
    toml = operator | {"Content-Type": "application/toml"}
    message = said(api.post("/api/v1/campaigns", content=bad.encode(), headers=toml | VI), 422, "rejected")
    assert "hi.toml: holdout: phải là một tỷ lệ trong [0; 1), nhưng nhận được 2" in message
    assert "hi.toml: channels[0]: không có kênh 'fax'" in message and "/tmp" not in message
    message = said(api.post("/api/v1/campaigns", content=bad.encode(), headers=toml | EN), 422, "rejected")
    assert "hi.toml: holdout: must be a fraction in [0, 1), got 2" in message


def test_a_stored_sentence_is_said_later_in_either_language() -> None:
    """An import job's failure and reasons are kept as template and parameters; older plain text as it is."""
    from loa import imports

    failure = Text("{problem}; the import stopped there: {imported} rows before it were imported, {rejected} rejected",
                   problem=Text("{path}:{line}: malformed CSV: {problem}", path=Text("the file"), line=3,
                                problem="unexpected end of data"), imported=1, rejected=0)
    kept = imports.stored(failure)
    assert kept.startswith('{"template": ') and "Text" not in kept
    back = imports.loaded(kept)
    assert isinstance(back, Text) and back == failure
    assert back.in_language(i18n.language("vi")) == (
        "tệp:3: CSV sai định dạng: unexpected end of data; việc nhập dừng ở đó: 1 dòng trước đó đã được nhập, "
        "0 dòng bị loại")
    assert imports.loaded("the file:3: an English line") == "the file:3: an English line"
    assert imports.loaded('{"template": broken') == '{"template": broken'
    assert imports.said(None, i18n.language("vi")) == ""
