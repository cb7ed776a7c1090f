"""Message templates: Jinja2 in a sandbox, strict about undefined variables.

Variables a template may use:

=================  ==========================================================
``subscriber``     ``name``, ``phone``, ``language``, ``carrier``
``attr``           the subscriber's imported attributes (``attr.smartphone``)
``area``           ``code``, ``name``, ``level``, ``population``, ``parent``
``campaign``       ``name``, ``description``
``link``           the message's tracked short URL, redirecting to the campaign's ``link``
=================  ==========================================================

SMS templates are ``.j2`` files; Zalo ZNS templates are TOML files with a
``template_id`` and a ``[data]`` table whose values are Jinja2 expressions.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import StrictUndefined, nodes
from jinja2.sandbox import SandboxedEnvironment

from loa.errors import TemplateError
from loa.policy import advertising_text
from loa.text import SmsInfo, measure, nfc, unaccent

SUBSCRIBER_FIELDS = {"name", "phone", "language", "carrier"}
AREA_FIELDS = {"code", "name", "level", "population", "parent"}
CAMPAIGN_FIELDS = {"name", "description"}
ROOTS = {"subscriber": SUBSCRIBER_FIELDS, "attr": None, "area": AREA_FIELDS, "campaign": CAMPAIGN_FIELDS,
         "link": set()}    # link: the message's tracked short URL (the campaign's `link` target)


@dataclass(frozen=True, slots=True)
class SmsText:
    text: str
    info: SmsInfo


@dataclass(frozen=True, slots=True)
class ZaloPayload:
    template_id: str
    data: dict[str, str]


class Renderer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = SandboxedEnvironment(
            # utf-8-sig: a BOM (Windows editors) must not become a U+FEFF sent to handsets
            loader=jinja2.FileSystemLoader(str(folder), encoding="utf-8-sig"),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self.env.filters["unaccent"] = unaccent
        self._zalo: dict[str, tuple[str, dict[str, jinja2.Template]]] = {}

    # -- loading ----------------------------------------------------------
    def source(self, name: str) -> str:
        path = self.folder / name
        try:
            return path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise TemplateError(f"template {name!r}: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise TemplateError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    def sms_template(self, name: str) -> jinja2.Template:
        try:
            return self.env.get_template(name)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"no template {name!r} in {self.folder}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{self.folder / name}:{exc.lineno}: template syntax error: {exc.message}") from None
        except UnicodeDecodeError as exc:
            raise TemplateError(f"{self.folder / name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    def zalo_template(self, name: str) -> tuple[str, dict[str, jinja2.Template]]:
        if name not in self._zalo:
            source = self.source(name)
            try:
                raw = tomllib.loads(source)
            except tomllib.TOMLDecodeError as exc:
                raise TemplateError(f"{self.folder / name}: not valid TOML: {exc}") from None
            template_id = raw.get("template_id")
            data = raw.get("data", {})
            if not isinstance(template_id, str | int) or not str(template_id).strip():
                raise TemplateError(f"{self.folder / name}: missing template_id (the approved ZNS template's id)")
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise TemplateError(f"{self.folder / name}: [data] must map ZNS parameter names to text")
            compiled = {}
            for key, expr in data.items():
                try:
                    compiled[key] = self.env.from_string(expr)
                except jinja2.TemplateSyntaxError as exc:
                    raise TemplateError(f"{self.folder / name}: data.{key}: template syntax error: {exc.message}") from None
            self._zalo[name] = (str(template_id), compiled)
        return self._zalo[name]

    # -- rendering --------------------------------------------------------
    def render_sms(self, name: str, context: Mapping[str, Any], *, unaccented: bool = False,
                   max_parts: int = 6, advertising_opt_out: str | None = None) -> SmsText:
        """The SMS text; an advertising message (``advertising_opt_out`` given) is framed as
        Decree 91/2020 requires: "[QC]" first and the opt-out instructions last."""
        template = self.sms_template(name)
        text = nfc(_render(template, context, name).strip())
        if not text:
            raise TemplateError(f"template {name!r} rendered an empty message")
        if advertising_opt_out is not None:
            text = advertising_text(text, nfc(advertising_opt_out))
        if unaccented:
            text = unaccent(text)
        info = measure(text)
        if info.parts > max_parts:
            raise TemplateError(
                f"template {name!r}: message is {info.parts} {info.encoding} parts "
                f"({info.units} units), more than the campaign's max_parts = {max_parts}"
            )
        return SmsText(text, info)

    def render_zalo(self, name: str, context: Mapping[str, Any]) -> ZaloPayload:
        template_id, compiled = self.zalo_template(name)
        data = {key: nfc(_render(t, context, f"{name} data.{key}")).strip() for key, t in compiled.items()}
        return ZaloPayload(template_id, data)

    # -- static checks ----------------------------------------------------
    def variables(self, name: str, channel: str) -> set[str]:
        """Dotted variable paths a template reads, e.g. {"subscriber.name", "attr.smartphone"}."""
        if channel == "zalo":
            self.zalo_template(name)
            sources = list(tomllib.loads(self.source(name)).get("data", {}).values())
        else:
            self.sms_template(name)
            sources = [self.source(name)]
        found: set[str] = set()
        for src in sources:
            tree = self.env.parse(src)
            own = local_names(tree)
            found |= {p for p in _paths(tree) if p.partition(".")[0] not in own}
        return found


def _render(template: jinja2.Template, context: Mapping[str, Any], name: str) -> str:
    try:
        return template.render(context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {name!r}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {name!r}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateError(f"template {name!r}: {type(exc).__name__}: {exc}") from None


def _paths(tree: nodes.Template) -> set[str]:
    """Variable paths read by the template, one level deep below each root."""
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
            found.add(f"{node.node.name}.{node.attr}")
        elif isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) \
                and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            found.add(f"{node.node.name}.{node.arg.value}")
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            found.add(node.name)
    # a bare root that is also used with a field is covered by the field
    return {p for p in found if "." in p or not any(q.startswith(p + ".") for q in found)}


def variable_problems(paths: Iterable[str], attribute_keys: set[str] | None) -> list[str]:
    """Why each variable can never have a value; ``attribute_keys`` None skips attr checks."""
    problems = []
    for path in sorted(paths):
        root, _, field = path.partition(".")
        if root not in ROOTS:
            problems.append(f"unknown variable {root!r} (known: {', '.join(sorted(ROOTS))})")
        elif not field:
            continue
        elif root == "attr":
            if attribute_keys is not None and field not in attribute_keys:
                problems.append(f"attr.{field}: no subscriber has an attribute {field!r}"
                                + (f" (known: {', '.join(sorted(attribute_keys))})" if attribute_keys else ""))
        elif field not in ROOTS[root]:  # type: ignore[operator]
            problems.append(f"{path}: {root} has no field {field!r} (known: {', '.join(sorted(ROOTS[root]))})")  # type: ignore[arg-type]
    return problems


def local_names(tree: nodes.Template) -> set[str]:
    """Names a template assigns itself ({% set %}, loop variables)."""
    names = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return names | {"loop", "range", "lipsum", "dict", "cycler", "joiner", "namespace"}
