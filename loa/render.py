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

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import StrictUndefined, nodes
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from loa.errors import TemplateError
from loa.policy import advertising_text
from loa.text import SmsInfo, measure, nfc, unaccent

SUBSCRIBER_FIELDS = {"name", "phone", "language", "carrier"}
AREA_FIELDS = {"code", "name", "level", "population", "parent"}
CAMPAIGN_FIELDS = {"name", "description"}
ROOTS = {"subscriber": SUBSCRIBER_FIELDS, "attr": None, "area": AREA_FIELDS, "campaign": CAMPAIGN_FIELDS,
         "link": set()}    # link: the message's tracked short URL (the campaign's `link` target)


# An SMS is at most 10 parts (1,530 GSM-7 characters): a template needs small loops only, and
# these bounds keep a mistyped or hostile one from holding a worker, however it tries.
RANGE_LIMIT = 1_000         # items of one range()
LOOP_BUDGET = 10_000        # steps of every {% for %} of one rendering together (nested loops)
OUTPUT_LIMIT = 20_000       # characters one rendering, or one string it builds, may reach
POWER_BITS = 4_096          # the largest integer ** may build
_budget: ContextVar[list[int] | None] = ContextVar("loa_render_budget", default=None)
# a width or precision of five digits or more in a %-format or a {}-format
_WIDE = re.compile(r"%[-#0 +]*(\d{5,}|\*)|%[-#0 +]*\d*\.(\d{5,}|\*)|\{[^{}]*:[^{}]*\d{5,}[^{}]*\}")


class ResourceLimit(ArithmeticError):
    """A rendering would take more time or memory than any message needs."""


def bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > RANGE_LIMIT:
        raise ResourceLimit(f"Range too big: range() of {len(rng):,} items, where a template may loop "
                            f"over at most {RANGE_LIMIT:,}")
    return rng


def loop_guard(iterable: Iterable[Any]) -> Iterable[Any]:
    """What every {% for %} iterates: its iterable, counted against the rendering's budget."""
    budget = _budget.get()
    for item in iterable:
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise ResourceLimit(f"its loops take more than {LOOP_BUDGET:,} steps in one rendering")
        yield item


def _check_size(value: Any) -> Any:
    if isinstance(value, str | list | tuple) and len(value) > OUTPUT_LIMIT:
        raise ResourceLimit(f"builds a value of {len(value):,} items, more than the {OUTPUT_LIMIT:,} "
                            "any message needs")
    return value


def _check_widths(args: Iterable[Any], limit: int = OUTPUT_LIMIT) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > limit:
            raise ResourceLimit(f"a width or count of {arg:,}, more than the {limit:,} any message needs")
        if isinstance(arg, str) and _WIDE.search(arg):
            raise ResourceLimit(f"a format with a width or precision of {OUTPUT_LIMIT:,} characters or more")


class MessageSandbox(SandboxedEnvironment):
    """Jinja2's sandbox (no Python internals), bounded in time and memory as well: small
    ranges, a loop budget per rendering, and no operator, method or filter that builds a
    huge string or number."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals["range"] = bounded_range
        self.globals["lipsum"] = _bounded(self.globals["lipsum"], limit=100)
        self.loop_guard = loop_guard
        for name in ("center", "indent", "format", "wordwrap", "truncate", "batch", "slice"):
            self.filters[name] = _bounded(self.filters[name])

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's tree, each loop's iterable wrapped in :func:`loop_guard` (reached as an
        attribute of the environment, which no template variable can shadow)."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("loop_guard"), [loop.iter], [], None, None,
                                   lineno=loop.lineno)
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 \
                and right * math.log2(abs(left)) > POWER_BITS:
            raise ResourceLimit(f"{left} ** {right} is a number of more than {POWER_BITS:,} bits")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > OUTPUT_LIMIT:
                    raise ResourceLimit(f"builds a value of {len(seq) * n:,} items, more than the "
                                        f"{OUTPUT_LIMIT:,} any message needs")
        if operator == "%" and isinstance(left, str):
            _check_widths([left])
        return _check_size(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:              # "{:>100000000}".format(...)
            _check_widths([value.__self__])
        return wrapped

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if isinstance(getattr(obj, "__self__", None), str):     # "x".center(n), "x".ljust(n)
            _check_widths(args + tuple(kwargs.values()))
        return _check_size(super().call(context, obj, *args, **kwargs))


def _bounded(fn: Callable[..., Any], limit: int = OUTPUT_LIMIT) -> Callable[..., Any]:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_widths([*args, *kwargs.values()], limit)
        return _check_size(fn(*args, **kwargs))

    for attr in ("jinja_pass_arg",):   # keep a filter's request for the context or environment
        if hasattr(fn, attr):
            setattr(bounded, attr, getattr(fn, attr))
    return bounded


@dataclass(frozen=True, slots=True)
class SmsText:
    text: str
    info: SmsInfo


@dataclass(frozen=True, slots=True)
class ZaloPayload:
    template_id: str
    data: dict[str, str]


class Renderer:
    """Templates from the templates folder, or from a stored campaign version's ``templates``
    ({path: text}, loa.versions); ``folder`` then only names where they came from."""

    def __init__(self, folder: Path, templates: Mapping[str, str] | None = None) -> None:
        self.folder = folder
        self.templates = dict(templates) if templates is not None else None
        loader: jinja2.BaseLoader
        if self.templates is not None:
            loader = jinja2.DictLoader(self.templates)
        else:
            # utf-8-sig: a BOM (Windows editors) must not become a U+FEFF sent to handsets
            loader = jinja2.FileSystemLoader(str(folder), encoding="utf-8-sig")
        self.env = MessageSandbox(
            loader=loader,
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
        if self.templates is not None:
            if name not in self.templates:
                raise TemplateError(f"template {name!r}: not in the campaign's stored version "
                                    f"(templates are stored from {self.folder} when it is applied)")
            return self.templates[name]
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
    token = _budget.set([LOOP_BUDGET])
    try:
        out: list[str] = []
        size = 0
        for chunk in template.generate(context):   # streamed: a runaway loop stops at the limit
            out.append(chunk)
            size += len(chunk)
            if size > OUTPUT_LIMIT:
                raise ResourceLimit(f"renders more than {OUTPUT_LIMIT:,} characters, more than any message needs")
        return "".join(out)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {name!r}: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template {name!r}: includes {exc.name!r}, which is not a template inside the "
                            f"templates folder (paths are relative to it and cannot leave it)") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {name!r}: {exc}") from None
    except ResourceLimit as exc:
        raise TemplateError(f"template {name!r}: refused by the sandbox: {exc}") from None
    except RecursionError:
        raise TemplateError(f"template {name!r}: includes or calls itself without end") from None
    except (TypeError, ValueError, ArithmeticError, MemoryError) as exc:
        raise TemplateError(f"template {name!r}: {type(exc).__name__}: {exc}") from None
    finally:
        _budget.reset(token)


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
