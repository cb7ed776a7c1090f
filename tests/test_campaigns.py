"""Campaign files: the shipped ones are valid, and every error is listed with
file, key path and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from loa.campaign import Campaign, load_all, load_one, parse_file
from loa.checks import attribute_keys, campaign_problems, validate_all
from loa.config import Config, from_mapping
from loa.errors import CampaignError, NotFound
from loa.importer import AreasHandler, SubscribersHandler, run_import
from loa.render import Renderer
from conftest import ROOT, write

SHIPPED = ROOT / "campaigns"
SHIPPED_TEMPLATES = ROOT / "templates"


@pytest.fixture
def shipped_config(tmp_path: Path) -> Config:
    return from_mapping(
        {
            "campaigns_dir": str(SHIPPED),
            "templates_dir": str(SHIPPED_TEMPLATES),
            "gateways": {"simulator": {"type": "simulator"}},
            "defaults": {"sms_gateway": "simulator", "zalo_gateway": "simulator"},
        },
        root=tmp_path,
    )


# -- the shipped campaigns ------------------------------------------------------

def test_shipped_campaigns_parse(shipped_config: Config) -> None:
    campaigns, problems = load_all(shipped_config.campaigns_dir)
    assert problems == []
    assert set(campaigns) == {"bluezone-reminder", "tourist-greeting"}

    reminder = campaigns["bluezone-reminder"]
    assert reminder.holdout == pytest.approx(0.10)
    assert reminder.suppress_events == ("installed",)
    assert [c.channel for c in reminder.channels] == ["sms"]
    assert reminder.channel("sms").max_parts == 4
    assert reminder.segment == {"areas": ["Sơn La"]}
    assert reminder.goal is not None and reminder.goal.share == 0.5
    assert reminder.attribution == 7 * 86400

    greeting = campaigns["tourist-greeting"]
    assert [c.channel for c in greeting.channels] == ["zalo", "sms"]
    assert greeting.trigger == "arrival"
    assert greeting.segment == {"areas": ["Sơn La"]}
    assert greeting.arrival is not None and (greeting.arrival.delay, greeting.arrival.regreet_after) == (600, 30 * 86400)


@pytest.mark.parametrize("keys", [None, set(), {"smartphone"}])
def test_shipped_campaigns_validate_against_shipped_templates(shipped_config: Config, keys: set[str] | None) -> None:
    campaigns, problems = load_all(shipped_config.campaigns_dir)
    assert problems == []
    for campaign in campaigns.values():
        assert campaign_problems(shipped_config, campaign, keys) == [], campaign.name
    assert validate_all(shipped_config, None)[1] == []


def test_shipped_sms_templates_fit_their_max_parts(shipped_config: Config) -> None:
    """Validation is static; render the shipped SMS templates with a long name too."""
    campaigns, _ = load_all(shipped_config.campaigns_dir)
    renderer = Renderer(shipped_config.templates_dir)
    context = {
        "subscriber": {"name": "Nguyễn Thị Phương Thảo", "phone": "+84912345678", "language": "vi",
                       "carrier": "Vinaphone"},
        "attr": {},
        "area": {"code": "125", "name": "Huyện Mai Sơn", "level": "district", "population": 1,
                 "parent": None},
        "campaign": {"name": "x", "description": ""},
    }
    for campaign in campaigns.values():
        spec = campaign.channel("sms")
        sms = renderer.render_sms(spec.template, context, unaccented=spec.unaccented, max_parts=spec.max_parts)
        assert sms.info.parts <= spec.max_parts
    for campaign in campaigns.values():
        if any(c.channel == "zalo" for c in campaign.channels):
            z = renderer.render_zalo(campaign.channel("zalo").template, context)
            assert z.data["customer_name"] == "Nguyễn Thị Phương Thảo"


# -- errors: file, key path and reason -----------------------------------------

GOOD = """
name = "{name}"
channels = ["sms"]
[sms]
template = "sms/ok.j2"
"""


@pytest.fixture
def folder(workdir: Path) -> Path:
    write(workdir / "templates" / "sms" / "ok.j2", "Chào {{ subscriber.name }} ở {{ area.name }}")
    return workdir / "campaigns"


def _one(folder: Path, body: str, stem: str = "c") -> tuple[Campaign | None, list[str]]:
    path = write(folder / f"{stem}.toml", body)
    return parse_file(path)


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ("holdot = 0.1\n" + GOOD.format(name="c"), "holdot", "unknown key"),
        (GOOD.format(name="c") + "tempalte = \"x\"\n", "sms.tempalte", "unknown key"),
        (GOOD.format(name="c") + "[segment]\nareas = [\"14\"]\nregion = \"x\"\n", "segment.region", "unknown key"),
        (GOOD.format(name="c") + "[[segment.rules]]\nfield = \"age\"\ngt = 18\n",
         "segment.rules[0].field", "unknown segment field 'age'"),
        (GOOD.format(name="c") + "[[segment.rules]]\nfield = \"attr.age\"\ngreater = 18\n",
         "segment.rules[0].greater", "unknown key"),
        (GOOD.format(name="c") + "[[segment.events]]\ntype = \"installed\"\nsince = \"yesterday\"\n",
         "segment.events[0].since", "duration like \"30d\""),
        ("holdout = 1.5\n" + GOOD.format(name="c"), "holdout", "must be a fraction in [0, 1), got 1.5"),
        ("holdout = -0.1\n" + GOOD.format(name="c"), "holdout", "must be a fraction"),
        ("holdout = \"10%\"\n" + GOOD.format(name="c"), "holdout", "got '10%'"),
        (GOOD.format(name="c").replace('["sms"]', '["zalo", "sms"]'), "zalo", "missing [zalo] table"),
        (GOOD.format(name="c").replace('["sms"]', '["sms", "mms"]'), "channels[1]", "unknown channel 'mms'"),
        (GOOD.format(name="c").replace('["sms"]', '[]'), "channels", "non-empty list"),
        (GOOD.format(name="c") + "max_parts = 11\n", "sms.max_parts", "from 1 to 10"),
        (GOOD.format(name="Bad Name"), "name", "must be lowercase"),
        # TOML true is a Python int: it must not pass for a number
        (GOOD.format(name="c") + "max_parts = true\n", "sms.max_parts", "got True"),
        ("validity_hours = true\n" + GOOD.format(name="c"), "validity_hours", "got True"),
        ("holdout = false\n" + GOOD.format(name="c"), "holdout", "got False"),
        (GOOD.format(name="c") + "[segment.rules]\nfield = \"attr.age\"\ngt = 18\n",
         "segment.rules", "write [[segment.rules]], not [segment.rules]"),
        (GOOD.format(name="c") + "[[segment.rules]]\nfield = \"language\"\neq = [\"vi\", \"en\"]\n",
         "segment.rules[0].eq", "must be a single value (for a list use in)"),
        ("attribution = \"7 days\"\n" + GOOD.format(name="c"), "attribution",
         "must be a duration like \"30m\", \"6h\" or \"1d\", got '7 days'"),
        ("attribution = 7\n" + GOOD.format(name="c"), "attribution", "must be a duration like \"30m\""),
        ("attribution = \"0d\"\n" + GOOD.format(name="c"), "attribution", "got '0d'"),   # nothing could count
        ("attribution = \"\"\n" + GOOD.format(name="c"), "attribution", "got ''"),
    ],
    ids=lambda v: v if isinstance(v, str) and "\n" not in v else "",
)
def test_parse_errors_name_file_key_and_reason(folder: Path, body: str, key: str, reason: str) -> None:
    campaign, problems = _one(folder, body)
    path = folder / "c.toml"
    assert campaign is None
    matching = [p for p in problems if p.startswith(f"{path}: {key}: ")]
    assert matching, problems
    assert reason in matching[0]


def test_attribution_window(folder: Path) -> None:
    """A duration like the others; a week unless set (see loa.report)."""
    default, _ = _one(folder, GOOD.format(name="c"))
    assert default is not None and default.attribution == 7 * 86400
    set_, problems = _one(folder, "attribution = \"48h\"\n" + GOOD.format(name="c"))
    assert problems == [] and set_ is not None and set_.attribution == 48 * 3600
    assert set_.snapshot()["attribution"] == "48h"          # what each run keeps, and its report reads


def test_sms_tempalte_typo_also_reports_the_missing_template(folder: Path) -> None:
    _, problems = _one(folder, 'name = "c"\nchannels = ["sms"]\n[sms]\ntempalte = "sms/ok.j2"\n')
    path = folder / "c.toml"
    assert problems == [
        f"{path}: sms.tempalte: unknown key (known: fallback_after, gateway, max_parts, template, unaccented)",
        f"{path}: sms.template: missing template path (relative to the templates folder)",
    ]


def test_every_problem_in_a_file_is_listed(folder: Path) -> None:
    body = """
        name = "c"
        holdout = 2
        trigger = "sometimes"
        channels = ["sms"]
        colour = "red"
        [sms]
        template = "sms/ok.j2"
        unaccented = "yes"
        [segment]
        [[segment.rules]]
        field = "attributes.age"
        between = [18]
        [window]
        start = "22:00"
        end = "07:00"
    """
    _, problems = _one(folder, body)
    keys = [p.split(": ")[1] for p in problems]
    assert sorted(keys) == sorted(["colour", "sms.unaccented", "segment.rules[0].between", "holdout",
                                   "trigger", "window"])


def test_not_toml_and_not_utf8(folder: Path) -> None:
    campaign, problems = _one(folder, "name = \n")
    assert campaign is None and len(problems) == 1
    assert problems[0].startswith(f"{folder / 'c.toml'}: not valid TOML")
    (folder / "latin.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    campaign, problems = parse_file(folder / "latin.toml")
    assert campaign is None and problems == [f"{folder / 'latin.toml'}: not UTF-8 text (invalid continuation byte at byte 11)"]


def test_duplicate_names_across_files(folder: Path) -> None:
    write(folder / "a.toml", GOOD.format(name="dup"))
    write(folder / "b.toml", GOOD.format(name="dup"))
    write(folder / "c.toml", GOOD.format(name="other"))
    campaigns, problems = load_all(folder)
    assert set(campaigns) == {"dup", "other"}
    assert campaigns["dup"].path == folder / "a.toml"
    assert problems == [f"{folder / 'b.toml'}: name: 'dup' is also defined in {folder / 'a.toml'}"]


def test_load_one(folder: Path) -> None:
    write(folder / "alpha.toml", GOOD.format(name="alpha"))
    write(folder / "file-name.toml", GOOD.format(name="declared"))
    write(folder / "broken.toml", "holdout = 7\n" + GOOD.format(name="broken"))
    assert load_one(folder, "alpha").name == "alpha"
    assert load_one(folder, "declared").path == folder / "file-name.toml"
    with pytest.raises(CampaignError) as err:
        load_one(folder, "broken")
    assert err.value.problems == [f"{folder / 'broken.toml'}: holdout: must be a fraction in [0, 1), got 7"]
    with pytest.raises(NotFound) as nf:
        load_one(folder, "nope")
    assert str(nf.value) == f"no campaign named 'nope' in {folder} (files: alpha, broken, file-name)"
    with pytest.raises(NotFound, match="does not exist"):
        load_one(folder / "missing", "alpha")


# -- whole-campaign checks: templates, variables, gateways ----------------------

def _problems(config: Config, body: str, keys: set[str] | None = None) -> list[str]:
    path = write(config.campaigns_dir / "c.toml", body)
    campaign, errs = parse_file(path)
    assert errs == [] and campaign is not None
    return campaign_problems(config, campaign, keys)


def test_valid_campaign_has_no_problems(config: Config, folder: Path) -> None:
    assert _problems(config, GOOD.format(name="c"), set()) == []


def test_missing_template_file(config: Config, folder: Path) -> None:
    problems = _problems(config, GOOD.format(name="c").replace("sms/ok.j2", "sms/nope.j2"))
    path = config.campaigns_dir / "c.toml"
    assert problems == [f"{path}: sms.template: no template 'sms/nope.j2' in {config.templates_dir}"]


def test_missing_zalo_template_file(config: Config, folder: Path) -> None:
    body = 'name = "c"\nchannels = ["zalo"]\n[zalo]\ntemplate = "zalo/nope.toml"\n'
    problems = _problems(config, body)
    assert len(problems) == 1
    assert problems[0].startswith(f"{config.campaigns_dir / 'c.toml'}: zalo.template: template 'zalo/nope.toml': cannot read")


def test_template_syntax_error_names_file_and_line(config: Config, folder: Path) -> None:
    write(config.templates_dir / "sms" / "bad.j2", "Dòng một\nDòng hai\nXin chào {{ subscriber.name }\n")
    problems = _problems(config, GOOD.format(name="c").replace("ok.j2", "bad.j2"))
    assert len(problems) == 1
    assert f"{config.templates_dir / 'sms' / 'bad.j2'}:3: template syntax error" in problems[0]
    assert problems[0].startswith(f"{config.campaigns_dir / 'c.toml'}: sms.template: ")


def test_zalo_template_syntax_error(config: Config, folder: Path) -> None:
    write(config.templates_dir / "zalo" / "bad.toml", 'template_id = "1"\n[data]\nname = "{{ subscriber.name "\n')
    problems = _problems(config, 'name = "c"\nchannels = ["zalo"]\n[zalo]\ntemplate = "zalo/bad.toml"\n')
    assert len(problems) == 1 and "data.name: template syntax error" in problems[0]


def _import_attribute_keys(engine: Engine, tmp_path: Path, areas_csv: Path) -> set[str] | None:
    run_import(engine, AreasHandler(engine, areas_csv), areas_csv)
    subs = write(tmp_path / "subs.csv", """
        phone,area,smartphone,age
        0912000001,116,yes,30
        0912000002,125,,41
    """)
    summary = run_import(engine, SubscribersHandler(engine, subs), subs)
    assert summary.imported == 2 and summary.rejected == 0
    return attribute_keys(engine)


def test_variables_no_subscriber_can_have(config: Config, folder: Path, engine: Engine, tmp_path: Path,
                                          areas_csv: Path) -> None:
    keys = _import_attribute_keys(engine, tmp_path, areas_csv)
    assert keys == {"smartphone", "age"}
    write(config.templates_dir / "sms" / "vars.j2", """
        {{ subscriber.name }} {{ attr.smartphone }} {{ attr["age"] }}
        {{ attr.zalo_id }} {{ subscriber.foo }} {{ user.name }} {{ area.parent.name }} {{ campaign.title }}
    """)
    problems = _problems(config, GOOD.format(name="c").replace("ok.j2", "vars.j2"), keys)
    prefix = f"{config.campaigns_dir / 'c.toml'}: sms.template (sms/vars.j2): "
    assert problems == [prefix + p for p in [
        "attr.zalo_id: no subscriber has an attribute 'zalo_id' (known: age, smartphone)",
        "campaign.title: campaign has no field 'title' (known: description, name)",
        "subscriber.foo: subscriber has no field 'foo' (known: carrier, language, name, phone)",
        "unknown variable 'user' (known: area, attr, campaign, link, subscriber)",
    ]]
    # without a database, attributes cannot be checked, the rest still is
    assert len(_problems(config, GOOD.format(name="c").replace("ok.j2", "vars.j2"), None)) == 3


def test_unknown_gateway(config: Config, folder: Path) -> None:
    problems = _problems(config, GOOD.format(name="c") + 'gateway = "nope"\n')
    assert problems == [f"{config.campaigns_dir / 'c.toml'}: sms.gateway: unknown gateway 'nope' (configured: jsonl, sim)"]


def test_template_and_gateway_problems_are_both_listed(config: Config, folder: Path) -> None:
    body = GOOD.format(name="c").replace("sms/ok.j2", "sms/nope.j2") + 'gateway = "nope"\n'
    problems = _problems(config, body)
    assert [p.split(": ")[1] for p in problems] == ["sms.template", "sms.gateway"]


def test_no_default_gateway(tmp_path: Path, folder: Path) -> None:
    config = from_mapping({"gateways": {"sim": {"type": "simulator"}}}, root=folder.parent)
    problems = _problems(config, GOOD.format(name="c"))
    assert problems == [f"{config.campaigns_dir / 'c.toml'}: sms.gateway: no gateway set and no "
                        f"defaults.sms_gateway in built-in defaults"]


def test_validate_all_collects_parse_and_check_problems(config: Config, folder: Path) -> None:
    write(folder / "a.toml", GOOD.format(name="a") + 'gateway = "nope"\n')
    write(folder / "b.toml", "holdot = 1\n" + GOOD.format(name="b"))
    write(folder / "c.toml", GOOD.format(name="c"))
    campaigns, problems = validate_all(config, None)
    assert set(campaigns) == {"a", "c"}
    assert [p.split(": ")[:2] for p in problems] == [[str(folder / "b.toml"), "holdot"],
                                                      [str(folder / "a.toml"), "sms.gateway"]]


# -- validate renders every template for real subscribers, as a send would ------------------

RENDERED = """
name = "{name}"
channels = {channels}
[segment]
areas = {areas}
[sms]
template = "sms/{name}.j2"
max_parts = 4
{zalo}
[window]
start = "00:00"
end = "24:00"
"""
LONG = "Chào {{ subscriber.name }} " + "ơ" * 780    # 793 UCS-2 characters: 12 parts of 67


@pytest.fixture
def town(workdir: Path, tmp_path: Path) -> Path:
    """Five subscribers in Sơn La's districts, and a valid campaign "ok" for them."""
    from conftest import AREAS_CSV
    from test_cli import invoke, ok, subscribers_csv

    ok(invoke(workdir, "init"))
    ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    ok(invoke(workdir, "import", "subscribers", str(subscribers_csv(tmp_path, 5))))
    _rendered(workdir, "ok", "Chào {{ subscriber.name }}, hãy cài Bluezone.")
    return workdir


def _rendered(workdir: Path, name: str, template: str, *, areas: str = '["Sơn La"]', channels: str = '["sms"]',
              zalo: str = "") -> Path:
    write(workdir / "templates" / "sms" / f"{name}.j2", template)
    return write(workdir / "campaigns" / f"{name}.toml",
                 RENDERED.format(name=name, channels=channels, areas=areas, zalo=zalo))


def _outbox_rows(workdir: Path) -> int:
    import os

    from sqlalchemy import func, select

    from loa import db

    engine = db.make_engine(os.environ["LOA_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(db.outbox)) or 0
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (LONG, ("template 'sms/bad.j2': message is 12 UCS-2 parts (793 units), more than the campaign's "
                "max_parts = 4")),
        ("{% if attr.smartphone == 'no' %}Chào{% endif %}\n", "template 'sms/bad.j2' rendered an empty message"),
        ("Chào {{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
        ("{% for i in range(100000000) %}x{% endfor %}", "refused by the sandbox: Range too big"),
        ("{% for i in range(999) %}{% for j in range(999) %}{% endfor %}{% endfor %}Chào",
         "refused by the sandbox: its loops take more than 10,000 steps"),
        ("Chào {% include '../../config.toml' %}", ("includes '../../config.toml', which is not a template "
                                                    "inside the templates folder")),
    ],
    ids=["parts", "empty", "sandbox", "range", "nested-loops", "include"],
)
def test_validate_preview_and_run_refuse_what_would_fail_at_send(town: Path, template: str, reason: str) -> None:
    from test_cli import invoke, one_line_error

    path = _rendered(town, "bad", template)
    r = invoke(town, "campaigns", "validate")
    assert r.exit_code != 0 and "Traceback" not in r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("error: 1 problem(s) in "), r.stderr
    assert lines[0].startswith(f"{path}: sms.template: "), lines[0]
    assert reason in lines[0]
    assert lines[0].endswith("(for 5 of 5 sample subscribers, e.g. Người 0 +8491****000)"), lines[0]

    line = one_line_error(invoke(town, "campaigns", "run", "bad"), code=2)
    assert line == f"error: {lines[0]}"
    assert _outbox_rows(town) == 0

    r = invoke(town, "campaigns", "preview", "bad")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.splitlines()[-1] == ("error: 3 of 3 sample rendering(s) failed: `loa campaigns validate` "
                                         "checks every template of bad"), r.stderr


def test_validate_renders_every_channel(town: Path) -> None:
    from test_cli import invoke

    write(town / "templates" / "zalo" / "z.toml", 'template_id = "1"\n[data]\nname = "{{ subscriber.name }}"\n'
          'note = "{{ attr.smartphone if attr.smartphone == \'no\' }}"\n')
    path = _rendered(town, "both", "Chào {{ subscriber.name.__class__ }}", channels='["zalo", "sms"]',
                     zalo='[zalo]\ntemplate = "zalo/z.toml"\n')
    lines = invoke(town, "campaigns", "validate").stderr.splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == ["zalo.template", "sms.template"], lines
    assert lines[0].startswith(f"{path}: zalo.template: template 'zalo/z.toml': data.note rendered empty")
    assert "access to attribute '__class__' of 'str' object is unsafe" in lines[1]


def test_validate_renders_the_longest_name_of_the_segment(town: Path, tmp_path: Path) -> None:
    from test_cli import invoke, ok

    name = "Nguyễn Thị Phương Thảo " * 8      # 183 characters: the importer takes up to 200
    # the first ten subscribers by id have short names; the one whose name makes the message long comes after
    more = "".join(f"09130000{i:02d},Bình,116\n" for i in range(10)) + f"0912999999,{name.strip()},125\n"
    r = ok(invoke(town, "import", "subscribers", str(write(tmp_path / "more.csv", "phone,name,area\n" + more))))
    assert "11 imported" in r.stdout, r.stdout
    path = _rendered(town, "short", "Chào {{ subscriber.name }}, hãy cài đặt ứng dụng Bluezone tại "
                     "https://bluezone.gov.vn và bật Bluetooth. Bluezone không thu thập vị trí của bạn.")
    # 2 UCS-2 parts for "Người 0", 5 for the long name
    lines = invoke(town, "campaigns", "validate").stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{path}: sms.template: template 'sms/short.j2': message is ") and \
        "more than the campaign's max_parts = 4" in lines[0]
    assert lines[0].endswith(f"(for 1 of 11 sample subscribers, e.g. {name.strip()} +8491****999)"), lines[0]


def test_segment_areas_that_do_not_resolve(town: Path) -> None:
    from test_cli import invoke, one_line_error

    path = _rendered(town, "atlantis", "Chào {{ subscriber.name }}", areas='["Atlantis"]')
    lines = invoke(town, "campaigns", "validate").stderr.splitlines()
    assert lines[0] == f"{path}: segment.areas: no area with code or name 'Atlantis'", lines
    assert len(lines) == 2
    one_line_error(invoke(town, "campaigns", "run", "atlantis"), f"{path}: segment.areas: ", "'Atlantis'", code=2)
    assert _outbox_rows(town) == 0


def test_a_segment_with_nobody_is_rendered_for_a_synthetic_subscriber(workdir: Path) -> None:
    from test_cli import invoke, ok

    ok(invoke(workdir, "init"))
    path = _rendered(workdir, "empty", "Chào {{ lipsum.__globals__ }}", areas="[]")
    lines = invoke(workdir, "campaigns", "validate").stderr.splitlines()
    assert lines[0].startswith(f"{path}: sms.template: template 'sms/empty.j2': access to attribute '__globals__'")
    assert lines[0].endswith("(for a synthetic subscriber: the segment has no members yet)"), lines[0]
    # a valid one validates before any area is imported, and says what it could not check
    path.unlink()
    _rendered(workdir, "fine", "Chào {{ subscriber.name }} ở {{ area.name }}, hãy cài Bluezone.")
    r = ok(invoke(workdir, "campaigns", "validate"))
    assert "1 campaign(s) valid (segment areas not checked: no areas imported yet)" in r.stdout


def test_a_variable_nobody_has_is_reported_once_not_for_every_sample(town: Path) -> None:
    from test_cli import invoke

    path = _rendered(town, "zalo-id", "Chào {{ attr.zalo_id }}")
    lines = invoke(town, "campaigns", "validate").stderr.splitlines()
    assert lines == [f"{path}: sms.template (sms/zalo-id.j2): attr.zalo_id: no subscriber has an attribute "
                     "'zalo_id' (known: smartphone)", f"error: 1 problem(s) in {town / 'campaigns'}"]
