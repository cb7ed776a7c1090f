"""Templates: sandboxed, strict, NFC, measured; Zalo payloads; static variable lists."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from loa.errors import TemplateError
from loa.render import Renderer, variable_problems
from loa.text import is_gsm7, measure
from conftest import write


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    (tmp_path / "sms").mkdir()
    (tmp_path / "zalo").mkdir()
    return tmp_path


@pytest.fixture
def renderer(templates: Path) -> Renderer:
    return Renderer(templates)


def ctx(**attr: Any) -> dict[str, Any]:
    return {
        "subscriber": {"name": "Nguyễn Văn An", "phone": "+84912345678", "language": "vi", "carrier": "Vinaphone"},
        "attr": attr,
        "area": {"code": "116", "name": "Thành phố Sơn La", "level": "district", "population": 400,
                 "parent": {"code": "14", "name": "Sơn La", "level": "province", "population": 1000,
                            "parent": None}},
        "campaign": {"name": "bluezone-reminder", "description": "Nhắc cài Bluezone"},
    }


def sms(templates: Path, source: str, name: str = "t.j2") -> str:
    write(templates / "sms" / name, source)
    return f"sms/{name}"


def test_renders_variables(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, """
        {#- a comment -#}
        Chào {{ subscriber.name }} ({{ area.name }}, {{ area.parent.name }}){% if attr.smartphone == "yes" %}, hãy cài Bluezone{% endif %}.
    """)
    out = renderer.render_sms(name, ctx(smartphone="yes"))
    assert out.text == "Chào Nguyễn Văn An (Thành phố Sơn La, Sơn La), hãy cài Bluezone."
    assert out.info == measure(out.text)
    assert out.info.encoding == "UCS-2"


# -- sandbox --------------------------------------------------------------------

@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ subscriber.name.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ renderer.__dict__ }}",
        "{{ '{0.__class__}'.format(subscriber) }}",
        "{% set x = subscriber.__class__ %}{{ x }}",
    ],
)
def test_sandbox_refuses_python_internals(templates: Path, renderer: Renderer, source: str) -> None:
    name = sms(templates, "Chào " + source)
    with pytest.raises(TemplateError) as err:
        renderer.render_sms(name, ctx() | {"renderer": renderer})
    # one line naming the template and the refused attribute, and nothing of what lies behind it
    assert re.fullmatch(rf"template {re.escape(repr(name))}: access to attribute '__\w+__' of '\w+' object is unsafe\.",
                        str(err.value))
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_sandbox_refuses_huge_ranges(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, "{% for i in range(10**9) %}x{% endfor %}")
    with pytest.raises(TemplateError, match="Range too big"):
        renderer.render_sms(name, ctx())


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% for i in range(100000000) %}x{% endfor %}", "Range too big: range() of 100,000,000 items"),
        ("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}Chào",
         "its loops take more than 10,000 steps in one rendering"),
        (("{% set l = [1] * 10000 %}{% for a in l %}{% for b in l %}{% for c in l %}{% endfor %}{% endfor %}"
          "{% endfor %}Chào"), "its loops take more than 10,000 steps"),
        ("{% for i in range(1000) %}{{ lipsum(1) }}{% endfor %}", "renders more than 20,000 characters"),
        ("{{ 'x' * 100000000 }}", "builds a value of 100,000,000 items"),
        ("{{ ('x' * 10000) * 10000 }}", "builds a value of 100,000,000 items"),
        ("{{ 9 ** 999999999 }}", "is a number of more than 4,096 bits"),
        ("{{ '%1000000000d' % 1 }}", "a format with a width or precision"),
        ("{{ '{:>1000000000}'.format(1) }}", "a format with a width or precision"),
        ("{{ '%.1000000000f'|format(1) }}", "a format with a width or precision"),
        ("{{ 'x'|center(1000000000) }}", "a width or count of 1,000,000,000"),
        ("{{ 'x'.ljust(1000000000) }}", "a width or count of 1,000,000,000"),
        ("{{ lipsum(1000000) }}", "a width or count of 1,000,000"),
    ],
)
def test_sandbox_refuses_what_would_exhaust_time_or_memory(templates: Path, renderer: Renderer, source: str,
                                                            reason: str) -> None:
    name = sms(templates, source)
    with pytest.raises(TemplateError) as err:
        renderer.render_sms(name, ctx(), max_parts=10)
    assert str(err.value).startswith(f"template {name!r}: refused by the sandbox: "), str(err.value)
    assert reason in str(err.value)


def test_sandbox_bounds_leave_ordinary_templates_alone(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, "Chào {{ subscriber.name|upper }}: {{ '%s-%03d'|format('A', 7) }} {{ '{:,}'.format("
                          "area.population * 1000) }} {{ 2 ** 10 }} {{ '-' * 3 }}{% for i in range(3) %}{{ i }}"
                          "{% else %}none{% endfor %} {{ 'x'|center(5) }}|{% for k in [1, 2] %}{{ loop.length }}"
                          "{% endfor %}")
    assert renderer.render_sms(name, ctx()).text == "Chào NGUYỄN VĂN AN: A-007 400,000 1024 ---012   x  |22"


def test_includes_stay_inside_the_templates_folder(templates: Path, renderer: Renderer) -> None:
    write(templates / "sms" / "footer.j2", "Tu choi soan TC")
    write(templates.parent / "secret.toml", "token = 's3cret'")
    name = sms(templates, "Chào. {% include 'sms/footer.j2' %}")
    assert renderer.render_sms(name, ctx()).text == "Chào. Tu choi soan TC"
    for i, path in enumerate(("../secret.toml", "sms/../../secret.toml", "/etc/passwd")):
        name = sms(templates, f"Chào {{% include '{path}' %}}", f"escape{i}.j2")
        with pytest.raises(TemplateError) as err:
            renderer.render_sms(name, ctx())
        assert str(err.value) == (f"template {name!r}: includes {path!r}, which is not a template inside the "
                                  "templates folder (paths are relative to it and cannot leave it)")
    name = sms(templates, "Chào {% include 'sms/self.j2' %}", "self.j2")
    with pytest.raises(TemplateError, match="includes or calls itself without end"):
        renderer.render_sms(name, ctx())


# -- strict undefined -------------------------------------------------------------

@pytest.mark.parametrize(
    ("source", "variable"),
    [
        ("Chào {{ subscriber.nmae }}", "nmae"),
        ("Chào {{ attr.smartphone }}", "smartphone"),
        ("{% if attr.smartphone %}x{% endif %}Chào", "smartphone"),
        ("Chào {{ attr['zalo id'] }}", "zalo id"),
        ("Chào {{ customer }}", "customer"),
        ("Chào {{ area.ward.name }}", "ward"),
    ],
)
def test_undefined_variable_names_template_and_variable(templates: Path, renderer: Renderer, source: str,
                                                        variable: str) -> None:
    name = sms(templates, source)
    with pytest.raises(TemplateError) as err:
        renderer.render_sms(name, ctx())
    assert str(err.value).startswith("template 'sms/t.j2': ")
    assert f"'{variable}'" in str(err.value)


def test_undefined_in_zalo_names_template_and_parameter(templates: Path, renderer: Renderer) -> None:
    write(templates / "zalo" / "z.toml", """
        template_id = "1"
        [data]
        ok = "{{ subscriber.name }}"
        bad = "{{ attr.zalo_name }}"
    """)
    with pytest.raises(TemplateError) as err:
        renderer.render_zalo("zalo/z.toml", ctx())
    assert str(err.value).startswith("template 'zalo/z.toml data.bad': ")
    assert "'zalo_name'" in str(err.value)


def test_missing_template(renderer: Renderer, templates: Path) -> None:
    with pytest.raises(TemplateError, match=r"no template 'sms/nope.j2' in "):
        renderer.render_sms("sms/nope.j2", ctx())


def test_runtime_errors_become_template_errors(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, "Chào {{ area.population // 0 }}")
    with pytest.raises(TemplateError, match=r"^template 'sms/t.j2': ZeroDivisionError"):
        renderer.render_sms(name, ctx())


def test_empty_message_is_refused(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, "{% if attr.smartphone == 'yes' %}Chào{% endif %}\n  \n")
    with pytest.raises(TemplateError, match="rendered an empty message"):
        renderer.render_sms(name, ctx(smartphone="no"))


# -- Unicode, encodings, parts ------------------------------------------------------

def test_nfd_template_and_values_render_nfc(templates: Path, renderer: Renderer) -> None:
    text = "Chào {{ subscriber.name }}, đề nghị cài đặt Bluezone."
    nfd = unicodedata.normalize("NFD", text)
    assert nfd != text
    name = sms(templates, nfd)
    person = ctx()
    person["subscriber"]["name"] = unicodedata.normalize("NFD", "Lò Thị Hương")
    out = renderer.render_sms(name, person)
    expected = "Chào Lò Thị Hương, đề nghị cài đặt Bluezone."
    assert out.text == expected
    assert unicodedata.is_normalized("NFC", out.text)
    assert out.info.units == len(expected)       # measured on the NFC text, not the longer NFD


def test_nfd_zalo_data_renders_nfc(templates: Path, renderer: Renderer) -> None:
    write(templates / "zalo" / "z.toml", 'template_id = "1"\n[data]\nprovince = "'
          + unicodedata.normalize("NFD", "Sơn La") + '"\n')
    assert renderer.render_zalo("zalo/z.toml", ctx()).data == {"province": "Sơn La"}


def test_a_lone_surrogate_in_an_attribute_renders_as_encodable_text(templates: Path, renderer: Renderer) -> None:
    from providers.smpp import encode_parts

    name = sms(templates, "Mã số của {{ subscriber.name }}: {{ attr.code }}")
    out = renderer.render_sms(name, ctx(code="A\ud800B"))
    assert out.text.endswith(": A\ufffdB") and out.info == measure(out.text)
    out.text.encode("utf-16-be")
    used, parts = encode_parts(out.text, out.info.encoding)    # what the SMPP gateway sends
    assert (used, len(parts)) == (out.info.encoding, out.info.parts)
    assert encode_parts(out.text, "GSM-7")[0] == "UCS-2"        # asked for GSM-7, it falls back
    plain = renderer.render_sms(name, ctx(code="A\ud800B"), unaccented=True)
    assert plain.text.endswith(": AB") and is_gsm7(plain.text) and plain.info == measure(plain.text)
    write(templates / "zalo" / "z.toml", 'template_id = "1"\n[data]\ncode = "{{ attr.code }}"\n')
    assert renderer.render_zalo("zalo/z.toml", ctx(code="A\ud800B")).data == {"code": "A\ufffdB"}


def test_byte_order_mark_is_not_sent(templates: Path, renderer: Renderer) -> None:
    (templates / "sms" / "bom.j2").write_bytes("\ufeffHello {{ subscriber.phone }}".encode())
    out = renderer.render_sms("sms/bom.j2", ctx())
    assert out.text == "Hello +84912345678"
    assert out.info.encoding == "GSM-7"


def test_not_utf8_template(templates: Path, renderer: Renderer) -> None:
    (templates / "sms" / "latin.j2").write_bytes("Chào".encode("cp1258"))
    with pytest.raises(TemplateError, match="not UTF-8"):
        renderer.render_sms("sms/latin.j2", ctx())


LONG = ("Sở TT&TT Sơn La: Kính gửi {{ subscriber.name }}, để bảo vệ bản thân, gia đình và cộng đồng "
        "trước dịch COVID-19, đề nghị cài đặt ứng dụng Bluezone tại https://bluezone.gov.vn và bật Bluetooth.")


def test_unaccented_is_gsm7_in_fewer_parts(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, LONG)
    accented = renderer.render_sms(name, ctx())
    plain = renderer.render_sms(name, ctx(), unaccented=True)
    assert accented.info.encoding == "UCS-2" and accented.info.parts == 3
    assert plain.info.encoding == "GSM-7" and plain.info.parts == 2
    assert is_gsm7(plain.text)
    assert plain.text.startswith("So TT&TT Son La: Kinh gui Nguyen Van An, de bao ve ban than")
    assert len(plain.text) == len(accented.text)


def test_unaccent_filter(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, "Chào {{ subscriber.name | unaccent }}")
    assert renderer.render_sms(name, ctx()).text == "Chào Nguyen Van An"


def test_max_parts_exceeded(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, LONG)
    assert renderer.render_sms(name, ctx(), max_parts=3).info.parts == 3
    with pytest.raises(TemplateError) as err:
        renderer.render_sms(name, ctx(), max_parts=2)
    message = str(err.value)
    assert message.startswith("template 'sms/t.j2': message is 3 UCS-2 parts (")
    assert "max_parts = 2" in message
    with pytest.raises(TemplateError, match=r"is 2 GSM-7 parts \(\d+ units\), more than the campaign's max_parts = 1"):
        renderer.render_sms(name, ctx(), unaccented=True, max_parts=1)


# -- Zalo ------------------------------------------------------------------------

def test_zalo_template(templates: Path, renderer: Renderer) -> None:
    write(templates / "zalo" / "z.toml", """
        # comment
        template_id = 231455
        [data]
        customer_name = "{{ subscriber.name or 'Quý khách' }}"
        district = "  {{ area.name }}  "
        link = "https://bluezone.gov.vn"
    """)
    payload = renderer.render_zalo("zalo/z.toml", ctx())
    assert payload.template_id == "231455"
    assert payload.data == {"customer_name": "Nguyễn Văn An", "district": "Thành phố Sơn La",
                            "link": "https://bluezone.gov.vn"}
    nameless = ctx()
    nameless["subscriber"]["name"] = ""
    assert renderer.render_zalo("zalo/z.toml", nameless).data["customer_name"] == "Quý khách"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('[data]\nname = "x"\n', "missing template_id"),
        ('template_id = " "\n', "missing template_id"),
        ('template_id = "1"\n[data]\ncount = 3\n', "[data] must map ZNS parameter names to text"),
        ('template_id = "1"\ndata = [\n', "not valid TOML"),
        ('template_id = "1"\n[data]\nname = "{% if %}"\n', "data.name: template syntax error"),
    ],
)
def test_bad_zalo_templates(templates: Path, renderer: Renderer, body: str, reason: str) -> None:
    (templates / "zalo" / "z.toml").write_text(body, encoding="utf-8")
    with pytest.raises(TemplateError) as err:
        renderer.render_zalo("zalo/z.toml", ctx())
    assert str(err.value).startswith(f"{templates / 'zalo' / 'z.toml'}: ")
    assert reason in str(err.value)


# -- static variables ---------------------------------------------------------------

def test_variables_of_sms_template(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, """
        {% set greeting = "Chào " ~ subscriber.name %}
        {% set n = namespace(total=0) %}
        {{ greeting }} {{ attr["smartphone"] }} {{ attr.age }} {{ area.parent.name }}
        {% for d in attr.districts %}{{ d }}{{ loop.index }}{% endfor %}
        {{ campaign }} {{ mystery }} {{ range(2) | list }}
        {{ ''.__class__ }}
    """)
    assert renderer.variables(name, "sms") == {
        "subscriber.name", "attr.smartphone", "attr.age", "area.parent", "attr.districts",
        "campaign", "mystery",
    }


def test_variables_of_zalo_template(templates: Path, renderer: Renderer) -> None:
    write(templates / "zalo" / "z.toml", """
        template_id = "1"
        [data]
        a = "{{ subscriber.name or 'Quý khách' }}"
        b = "{% set p = area.parent %}{{ p.name }}"
        c = "{{ attr['zalo id'] }}"
    """)
    assert renderer.variables("zalo/z.toml", "zalo") == {"subscriber.name", "area.parent", "attr.zalo id"}


def test_variables_of_broken_template_raise(templates: Path, renderer: Renderer) -> None:
    name = sms(templates, "line 1\n{{ subscriber.name \n")
    with pytest.raises(TemplateError, match=rf"^{templates / 'sms' / 't.j2'}:2: template syntax error"):
        renderer.variables(name, "sms")


def test_variable_problems() -> None:
    paths = {"subscriber.name", "attr.age", "attr.x", "area.ward", "campaign", "foo", "subscriber"}
    assert variable_problems(paths, {"age"}) == [
        "area.ward: area has no field 'ward' (known: code, level, name, parent, population)",
        "attr.x: no subscriber has an attribute 'x' (known: age)",
        "unknown variable 'foo' (known: area, attr, campaign, link, subscriber)",
    ]
    assert variable_problems(paths, None) == [
        "area.ward: area has no field 'ward' (known: code, level, name, parent, population)",
        "unknown variable 'foo' (known: area, attr, campaign, link, subscriber)",
    ]
    assert variable_problems({"attr.age"}, set()) == ["attr.age: no subscriber has an attribute 'age'"]
