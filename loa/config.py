"""Configuration: one TOML file, secrets named by environment variable.

Discovery order: ``--config``, then ``$LOA_CONFIG``, then ``./config.toml``.
``$LOA_DATABASE_URL`` overrides the file's database URL (containers, CI).

The whole file is checked once, when it loads, against a declared schema (pydantic
models below; each gateway type's settings come from its adapter's ``settings``).
Every table refuses keys it does not declare, so a new key cannot go unchecked, and
every problem found is reported, one line each: file, key path, reason.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from datetime import time as dt_time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo

from loa.campaign import NAME as CAMPAIGN_NAME
from loa.errors import ConfigError, SecretMissing
from providers import registry
from providers.base import Provider, Setting

DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
DIGEST_AT = re.compile(r"^(\d{1,2}):(\d{2})$")
PRICE_KEYS = {"price_per_part", "price_per_part_by_carrier", "price_per_zns"}
COMMON_GATEWAY_KEYS = {"type", "rate", "burst", "description"} | PRICE_KEYS
# Names that hold a secret whatever the gateway type: a literal value is refused.
SECRET_NAME = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|secret_?key|auth)(_|$)", re.IGNORECASE)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQLITE_URL = re.compile(r"^sqlite(\+\w+)?:///")
URL_PASSWORD = re.compile(r"^[a-z0-9+]+://[^/@:]*:[^/@]+@", re.IGNORECASE)
DATABASES = {"sqlite": "SQLite (sqlite:///loa.db)", "postgresql": "PostgreSQL (postgresql+psycopg://...)"}


@dataclasses.dataclass(frozen=True)
class Prices:
    """What a gateway charges, in VND: per SMS part (optionally per carrier) and per ZNS message."""

    per_part: int | None = None
    by_carrier: Mapping[str, int] = dataclasses.field(default_factory=dict)   # carrier key -> per part
    per_zns: int | None = None

    def sms_part(self, carrier: str) -> int | None:
        """The price of one SMS part to a subscriber of ``carrier`` (as phonenumbers names it)."""
        from loa.phones import carrier_key

        return self.by_carrier.get(carrier_key(carrier), self.per_part)

    @property
    def highest_sms_part(self) -> int | None:
        known = [p for p in (self.per_part, *self.by_carrier.values()) if p is not None]
        return max(known) if known else None


@dataclasses.dataclass(frozen=True)
class GatewaySpec:
    """A configured gateway, secrets still unresolved (named by env var)."""

    name: str
    type: str
    settings: Mapping[str, Any]       # plain settings, without type/rate/burst
    rate: float | None
    burst: int | None
    source: str                       # "config.toml: gateways.NAME" for messages
    prices: Prices = Prices()


@dataclasses.dataclass(frozen=True)
class DigestSpec:
    """The daily report written to a folder ([digest])."""

    folder: Path
    cron: str                           # five fields, read in the configuration's time zone
    campaigns: tuple[str, ...] | None   # None: every campaign that has runs
    formats: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ApprovalPolicy:
    """[approval]: the campaigns that need four-eyes approval (loa.versions.needs_approval)."""

    advertising: bool = False
    above_recipients: int | None = None
    always: bool = False

    @property
    def active(self) -> bool:
        return self.always or self.advertising or self.above_recipients is not None


@dataclasses.dataclass(frozen=True)
class Retention:
    """How long personal data is kept ([retention]; loa.retention purges daily).  The key of
    the numbers' keyed hash is a secret: $LOA_SUBJECT_KEY (loa.subjects)."""

    arrivals_days: int = 30
    message_texts_days: int = 90
    ledger_numbers_days: int = 730


@dataclasses.dataclass(frozen=True)
class Config:
    path: Path | None
    database_url: str
    timezone: ZoneInfo
    campaigns_dir: Path
    templates_dir: Path
    gateways: Mapping[str, GatewaySpec]
    defaults: Mapping[str, str]
    send: Mapping[str, Any]
    policy: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    serve: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    digest: DigestSpec | None = None
    language: str = "vi"                # of the pages and report files officials read
    approval: ApprovalPolicy = ApprovalPolicy()
    retention: Retention = dataclasses.field(default_factory=lambda: Retention())

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "built-in defaults"

    def gateway(self, name: str) -> GatewaySpec:
        try:
            return self.gateways[name]
        except KeyError:
            known = ", ".join(sorted(self.gateways)) or "none configured"
            raise ConfigError(f"{self.label}: unknown gateway {name!r}{_did_you_mean(name, self.gateways)} "
                              f"(configured: {known})") from None

    def default_gateway(self, channel: str) -> str | None:
        return self.defaults.get(f"{channel}_gateway")


# -- the schema -------------------------------------------------------------------------
# A field's description is the reason shown when its value has the wrong type or range.

def _env_name(value: str) -> str:
    if not ENV_NAME.match(value):
        raise ValueError(f"must name an environment variable, got {value!r}")
    return value


EnvName = Annotated[str, AfterValidator(_env_name), Field(description="must name an environment variable")]


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):   # "Asia" is a folder of the tzdata package
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


def _database_url_problem(url: str, *, in_file: bool = True) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if in_file and URL_PASSWORD.match(url):
        return ("contains a password; put the URL in an environment variable and name it with "
                "database_url_env")
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        return f"not a database URL; loa supports {' and '.join(DATABASES.values())}"
    if backend not in DATABASES:
        return f"unsupported database {backend!r}; loa supports {' and '.join(DATABASES.values())}"
    return None


def _database_url(url: str) -> str:
    if problem := _database_url_problem(url):
        raise ValueError(problem)
    return url


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Defaults(_Table):
    sms_gateway: str = Field("", description="must name a gateway of [gateways]")
    zalo_gateway: str = Field("", description="must name a gateway of [gateways]")


class _Send(_Table):
    threads: int = Field(8, ge=1, description="must be a whole number of concurrent gateway calls, at least 1")
    batch_size: int = Field(500, ge=1, description="must be a whole number of rows, at least 1")
    lease_seconds: float = Field(300.0, gt=0, description="must be a positive number of seconds")
    limiter: Literal["database", "memory"] = Field(
        "database", description='must be "database" (shared by every worker) or "memory"')
    poll_interval: float = Field(1.0, gt=0, description="must be a positive number of seconds")


class _Policy(_Table):
    advertising_frequency_cap: int = Field(3, ge=0, description="must be a non-negative whole number")
    public_frequency_cap: int = Field(0, ge=0, description="must be a non-negative whole number")
    frequency_hours: float = Field(24.0, ge=0, description="must be a non-negative number")


class _Approval(_Table):
    """Which campaigns a second user with the approver role must approve before they run."""

    advertising: bool = Field(False, description="must be true or false")
    above_recipients: int | None = Field(None, ge=0, description="must be a whole number of recipients, at least 0")
    always: bool = Field(False, description="must be true or false")


class _Retention(_Table):
    arrivals_days: int = Field(30, ge=1, description="must be a whole number of days, at least 1")
    message_texts_days: int = Field(90, ge=1, description="must be a whole number of days, at least 1")
    ledger_numbers_days: int = Field(730, ge=1, description="must be a whole number of days, at least 1")


class _Serve(_Table):
    host: str = Field("127.0.0.1", description="must be a host name or address")
    port: int = Field(8080, ge=1, le=65535, description="must be a port number from 1 to 65535")
    public_url: str = Field("", description="must be a URL")
    opt_out_reply: str = Field("", description="must be text")
    workers: int = Field(1, ge=0, le=64, description="must be a whole number of dispatchers from 0 to 64")
    arrivals_token_env: EnvName = "LOA_ARRIVALS_TOKEN"
    arrivals_folder: Annotated[str, AfterValidator(_not_blank)] = Field("", description="must be a folder path")
    greet_every: float = Field(15.0, gt=0, description="must be a positive number of seconds")
    report_token_env: EnvName = ""


def _digest_cron(value: Any) -> str:
    """``at``: a time of day ("07:00", or TOML's 07:00:00) or a five-field cron string, as cron."""
    if isinstance(value, dt_time):
        return f"{value.minute} {value.hour} * * *"
    text = value.strip() if isinstance(value, str) else ""
    if (m := DIGEST_AT.match(text)) and int(m[1]) < 24 and int(m[2]) < 60:
        return f"{int(m[2])} {int(m[1])} * * *"
    if len(text.split()) == 5:
        from loa.cron import cron_trigger

        try:
            cron_trigger(text, ZoneInfo("UTC"))
        except ValueError as exc:
            raise ValueError(f"not a valid cron string {text!r}: {exc}") from None
        return text
    raise ValueError(f"must be a time of day like \"07:00\" or a cron string like \"0 7 * * 1-5\", got {value!r}")


def _digest_campaigns(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and CAMPAIGN_NAME.match(v)
                                                           for v in value):
        raise ValueError(f"must be a non-empty list of campaign names, got {value!r} "
                         "(leave it out for every campaign that has runs)")
    return tuple(value)


def _digest_formats(value: Any) -> tuple[str, ...]:
    from loa.report import (
        FORMATS,  # the report owns its formats; it loads the database layer
    )

    if not isinstance(value, list) or not value or any(v not in FORMATS for v in value):
        raise ValueError(f"must be a non-empty list of {', '.join(map(repr, FORMATS))}, got {value!r}")
    return tuple(dict.fromkeys(value))


class _Digest(_Table):
    folder: Annotated[str, AfterValidator(_not_blank)] = Field(
        description="must be a folder path", json_schema_extra={
            "missing": 'name the folder the daily report goes to, e.g. folder = "reports"'})
    at: Annotated[Any, AfterValidator(_digest_cron)] = "0 7 * * *"
    campaigns: Annotated[Any, AfterValidator(_digest_campaigns)] = None
    formats: Annotated[Any, AfterValidator(_digest_formats)] = ("html", "csv")


class _Schema(_Table):
    """The top level of config.toml.  Gateway tables are checked by type, in a second step."""

    database_url: Annotated[str, AfterValidator(_database_url)] = Field(
        "sqlite:///loa.db", description='must be a database URL such as "sqlite:///loa.db"')
    database_url_env: EnvName = ""
    timezone: Annotated[str, AfterValidator(_zone)] = Field(DEFAULT_TIMEZONE, description="must be a time zone name")
    language: Literal["vi", "en"] = Field("vi", description="must be a language loa speaks: \"vi\" or \"en\"")
    campaigns_dir: str = Field("campaigns", description="must be a folder path")
    templates_dir: str = Field("templates", description="must be a folder path")
    defaults: _Defaults = _Defaults()
    gateways: dict[str, dict[str, Any]] = Field({}, description="must be a table")
    send: _Send = _Send()
    policy: _Policy = _Policy()
    serve: _Serve = _Serve()
    digest: _Digest | None = None
    approval: _Approval = _Approval()
    retention: _Retention = _Retention()


def _carrier_prices(value: Any) -> dict[str, int]:
    from loa.phones import CARRIERS

    if not isinstance(value, dict):
        raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError as this key's problem
            "must be a table of carrier = price in VND per SMS part, e.g. { viettel = 790 }")
    for carrier, price in value.items():
        if carrier not in CARRIERS:
            raise ValueError(f"unknown carrier {carrier!r}{_did_you_mean(carrier, CARRIERS)} "
                             f"(known: {', '.join(CARRIERS)})")
        if isinstance(price, bool) or not isinstance(price, int) or price < 0:
            raise ValueError(f"{carrier}: must be a whole number of VND per SMS part, at least 0, got {price!r}")
    return dict(value)


class _Gateway(_Table):
    """What every gateway table has, whatever its type."""

    type: str = Field("", description="must be a gateway type name")
    rate: float = Field(0.0, gt=0, description="must be a positive number of SMS parts per second")
    burst: int = Field(1, ge=1, description="must be a positive integer (SMS parts allowed back to back)")
    description: str = Field("", description="must be text")
    price_per_part: int = Field(0, ge=0, description="must be a whole number of VND per SMS part, at least 0")
    price_per_part_by_carrier: Annotated[Any, AfterValidator(_carrier_prices)] = None
    price_per_zns: int = Field(0, ge=0, description="must be a whole number of VND per ZNS message, at least 0")


class _UnknownGateway(_Gateway):
    """A gateway whose type gives no declared settings: only the common keys are checked."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


def _describe(setting: Setting) -> str:
    """The reason shown when a value does not fit ``setting``'s declaration."""
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}
    kinds = getattr(setting.kind, "__args__", None) or (setting.kind,)
    what = " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    bounds = [f"{op} {bound:g}" for op, bound in ((">", setting.gt), (">=", setting.ge), ("<=", setting.le))
              if bound is not None]
    return f"must be {what}" + (f" ({', '.join(bounds)})" if bounds else "")


def _setting_field(setting: Setting) -> tuple[Any, FieldInfo]:
    kind = setting.kind
    if kind is None:
        return Any, Field(None, alias=setting.name)
    reason = _describe(setting)
    if isinstance(kind, types.UnionType):
        # one check and one reason for the union, not one error per member
        allowed = tuple(kind.__args__)

        def check(value: Any) -> Any:
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise ValueError(f"{reason}, got {value!r}")
            return value
        return Annotated[Any, AfterValidator(check)], Field(None, alias=setting.name)
    return kind, Field(None, alias=setting.name, gt=setting.gt, ge=setting.ge, le=setting.le, description=reason)


@functools.cache
def _gateway_model(cls: type[Provider]) -> type[_Gateway]:
    """The schema of a gateway table of type ``cls``: its declared settings, each also as NAME_env
    (read from the environment); a secret only as NAME_env."""
    fields: dict[str, Any] = {}
    for i, setting in enumerate(cls.settings):
        if not setting.secret:
            fields[f"setting_{i}"] = _setting_field(setting)
        fields[f"setting_{i}_env"] = (EnvName, Field("", alias=f"{setting.name}_env"))
    return create_model(f"{cls.__name__}Settings", __base__=_Gateway, **fields)


# -- problems, one line each ------------------------------------------------------------

def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f", did you mean {close[0]!r}?" if close else ""


def _field(model: type[BaseModel] | None, key: Any) -> FieldInfo | None:
    if model is None:
        return None
    return next((f for n, f in model.model_fields.items() if (f.alias or n) == key), None)


def _holder(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose field ``loc[-1]`` is, walking down through nested tables."""
    for key in loc[:-1]:
        field = _field(model, key)
        annotation = field.annotation if field else None
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((a for a in candidates if _is_model(a)), None)
        if model is None:
            return None
    return model


def _is_model(annotation: Any) -> bool:
    try:
        return issubclass(annotation, BaseModel)
    except TypeError:   # not a class: a generic alias, Any, None
        return False


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _shown(key: Any, value: Any) -> str:
    if isinstance(key, str) and SECRET_NAME.search(key) and not key.endswith("_env"):
        return ""
    text = repr(value)
    return f", got {text if len(text) <= 60 else text[:57] + '...'}"


def _problems(exc: ValidationError, model: type[BaseModel], where: str, prefix: tuple[Any, ...] = (),
              unknown: Callable[[str, list[str]], str] | None = None) -> list[str]:
    """One line per error of ``exc``, raised by ``model`` for the table at ``prefix``."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        holder = _holder(model, loc) if loc else model
        key = loc[-1] if loc else None
        field = _field(holder, key)
        kind = error["type"]
        if kind == "extra_forbidden" and holder is not None:
            known = sorted(f.alias or n for n, f in holder.model_fields.items())
            reason = (unknown(str(key), known) if unknown and len(loc) == 1 else
                      f"unknown key{_did_you_mean(str(key), known)} (known: {', '.join(known)})")
        elif kind == "missing":
            hint = (field.json_schema_extra or {}).get("missing") if field else None   # type: ignore[union-attr]
            reason = "missing" + (f"; {hint}" if hint else "")
        elif kind == "value_error":
            reason = str(error["ctx"]["error"])
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            reason = "must be a table"
        elif field is not None and field.description:
            reason = field.description + _shown(key, error.get("input"))
        else:
            reason = error["msg"][0].lower() + error["msg"][1:] + _shown(key, error.get("input"))
        lines.append(f"{where}: {_path(prefix + loc)}: {reason}")
    return lines


def _validate(model: type[BaseModel], data: Any, problems: list[str], where: str,
              prefix: tuple[Any, ...] = (), **kw: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems += _problems(exc, model, where, prefix, **kw)
        return None


def _check_gateway(name: str, table: Mapping[str, Any], label: str, problems: list[str]) -> GatewaySpec:
    where = f"{label}: gateways.{name}"
    type_name = table.get("type")
    cls: type[Provider] | None = None
    if "type" not in table:
        problems.append(f"{where}: missing 'type' (e.g. type = \"simulator\"; known types: "
                        f"{', '.join(registry.known_types())})")
    elif isinstance(type_name, str):
        try:
            cls = registry.get(type_name)
        except registry.BrokenProviderError:
            pass   # declared but not loadable (a missing SDK): only this gateway fails, when it is built
        except registry.UnknownProviderError:
            known = registry.known_types()
            problems.append(f"{where}.type: unknown gateway type {type_name!r}{_did_you_mean(type_name, known)} "
                            f"(known types: {', '.join(known)})")
    if cls is None:
        _validate(_UnknownGateway, table, problems, label, ("gateways", name))
        problems += _name_rules(table, where)
    else:
        def unknown(key: str, known: list[str]) -> str:
            if f"{key}_env" in known:
                return (f"literal secrets are not allowed in configuration files; "
                        f"export the secret and write {key}_env = \"VARIABLE_NAME\"")
            settings = sorted(s.name for s in cls.settings)
            return (f"unknown setting for gateway type {cls.type!r}{_did_you_mean(key, known)} "
                    f"(known: {', '.join(settings) or 'none'}; common: {', '.join(sorted(COMMON_GATEWAY_KEYS))})")

        _validate(_gateway_model(cls), table, problems, label, ("gateways", name), unknown=unknown)
        for setting in cls.settings:
            if setting.required and setting.name not in table and f"{setting.name}_env" not in table:
                how = f"{setting.name}_env = \"VARIABLE\"" if setting.secret else f"{setting.name} = ..."
                problems.append(f"{where}: missing required setting {setting.name!r} ({how})")
    rate, burst = table.get("rate"), table.get("burst")
    settings = {k: v for k, v in table.items() if k not in COMMON_GATEWAY_KEYS}
    by_carrier = table.get("price_per_part_by_carrier")
    prices = Prices(table.get("price_per_part"), dict(by_carrier) if isinstance(by_carrier, dict) else {},
                    table.get("price_per_zns"))
    return GatewaySpec(name, str(type_name), settings, rate, burst, where, prices)


def _name_rules(table: Mapping[str, Any], where: str) -> list[str]:
    """For a gateway of no known type: secrets by name, and *_env naming a variable."""
    problems = []
    for key, value in table.items():
        if key in COMMON_GATEWAY_KEYS:
            continue
        if key.endswith("_env"):
            if not isinstance(value, str) or not ENV_NAME.match(value):
                problems.append(f"{where}.{key}: must name an environment variable, got {value!r}")
        elif SECRET_NAME.search(key) and value not in ("", None):
            problems.append(f"{where}.{key}: literal secrets are not allowed in configuration files; "
                            f"export the secret and write {key}_env = \"VARIABLE_NAME\"")
    return problems


def _check_defaults(defaults: _Defaults, gateways: Mapping[str, GatewaySpec], label: str) -> list[str]:
    problems = []
    for key in sorted(defaults.model_fields_set):
        name = getattr(defaults, key)
        if name not in gateways:
            problems.append(f"{label}: defaults.{key}: no gateway named {name!r} in [gateways]"
                            f"{_did_you_mean(name, gateways)}")
            continue
        channel = key.removesuffix("_gateway")
        try:
            cls = registry.get(gateways[name].type)
        except registry.UnknownProviderError:
            continue   # reported with the gateway
        if channel not in cls.channels:
            problems.append(f"{label}: defaults.{key}: gateway {name!r} ({cls.type}) does not send {channel} "
                            f"(it sends {', '.join(cls.channels)})")
    return problems


# -- loading ----------------------------------------------------------------------------

def discover(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Find the configuration file, or say how to provide one."""
    if explicit:
        return _file(Path(explicit), f"config file {Path(explicit)}")
    env = os.environ.get("LOA_CONFIG")
    if env:
        return _file(Path(env), f"$LOA_CONFIG points to {Path(env)}, which")
    path = Path("config.toml")
    if path.is_file():
        return path
    raise ConfigError(
        "no configuration found: pass --config FILE, set $LOA_CONFIG, "
        "or copy config.example.toml to ./config.toml"
    )


def _file(path: Path, what: str) -> Path:
    if path.is_dir():
        raise ConfigError(f"{what} is a directory, not a configuration file "
                          f"(for example {path / 'config.toml'})")
    if not path.is_file():
        raise ConfigError(f"{what} does not exist")
    return path


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = discover(explicit)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return from_mapping(raw, path)


def from_mapping(raw: Mapping[str, Any], path: Path | None = None, root: Path | None = None) -> Config:
    """Check ``raw`` against the schema and build the configuration; every problem at once."""
    label = str(path) if path else "config"
    base = root or (path.parent if path else Path.cwd())
    problems: list[str] = []
    schema: _Schema | None = _validate(_Schema, raw, problems, label)
    tables = raw.get("gateways")
    gateways = {
        name: _check_gateway(name, table, label, problems)
        for name, table in (tables.items() if isinstance(tables, Mapping) else ())
        if isinstance(table, Mapping)
    }
    if schema is not None:
        problems += _check_defaults(schema.defaults, gateways, label)
    if problems or schema is None:
        raise ConfigError(*problems)
    return Config(
        path=path,
        database_url=_effective_database_url(schema, label, base),
        timezone=ZoneInfo(schema.timezone),
        campaigns_dir=_folder(schema.campaigns_dir, base),
        templates_dir=_folder(schema.templates_dir, base),
        gateways=gateways,
        defaults={key: getattr(schema.defaults, key) for key in schema.defaults.model_fields_set},
        send=schema.send.model_dump(exclude_unset=True),
        policy=schema.policy.model_dump(exclude_unset=True),
        serve=schema.serve.model_dump(exclude_unset=True),
        digest=_digest(schema.digest, base),
        language=schema.language,
        approval=ApprovalPolicy(**schema.approval.model_dump()),
        retention=Retention(**schema.retention.model_dump()),
    )


def _effective_database_url(schema: _Schema, label: str, base: Path) -> str:
    """The file's URL, unless the environment names another (which is checked the same way)."""
    if env_override := os.environ.get("LOA_DATABASE_URL"):
        url, where = env_override, "$LOA_DATABASE_URL"
    elif "database_url_env" in schema.model_fields_set:
        var = schema.database_url_env
        url, where = _env(var, f"{label}: database_url_env"), f"{label}: database_url_env (${var})"
    else:
        return resolve_sqlite_path(schema.database_url, base)
    if problem := _database_url_problem(url, in_file=False):   # a password belongs in the environment
        raise ConfigError(f"{where}: {problem}")
    return url


def resolve_sqlite_path(url: str, base: Path) -> str:
    """Make a relative SQLite path relative to the configuration's folder."""
    match = _SQLITE_URL.match(url)   # sqlite:/// or sqlite+driver:///
    if match and not url.startswith(match[0] + "/") and not url[match.end():].startswith(":memory:"):
        rest = url[match.end():]
        return match[0] + str((base / rest).resolve())
    return url


def _folder(value: Any, base: Path) -> Path:
    path = Path(str(value))
    return path if path.is_absolute() else (base / path).resolve()


def _digest(digest: _Digest | None, base: Path) -> DigestSpec | None:
    if digest is None:
        return None
    return DigestSpec(folder=_folder(digest.folder, base), cron=digest.at,
                      campaigns=digest.campaigns, formats=tuple(digest.formats))


def _env(var: str, where: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise SecretMissing(f"{where}: environment variable {var} is not set")
    return value


def resolve_settings(spec: GatewaySpec, declared: list[Any]) -> dict[str, Any]:
    """Check ``spec`` against a provider's declared settings and read its secrets.

    ``declared`` is the provider class's ``settings`` (``providers.base.Setting``).
    """
    by_name = {s.name: s for s in declared}
    options: dict[str, Any] = {}
    for key, value in spec.settings.items():
        name = key.removesuffix("_env")
        setting = by_name.get(name)
        if setting is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(f"{spec.source}.{key}: unknown setting for gateway type {spec.type!r} (known: {known})")
        if setting.secret and not key.endswith("_env"):
            raise ConfigError(
                f"{spec.source}.{key}: literal secrets are not allowed; write {key}_env = \"VARIABLE_NAME\""
            )
        options[name] = _env(value, f"{spec.source}.{key}") if key.endswith("_env") else value
    for setting in declared:
        if setting.name not in options:
            if setting.required:
                how = f"{setting.name}_env = \"VARIABLE\"" if setting.secret else f"{setting.name} = ..."
                raise ConfigError(f"{spec.source}: missing required setting {setting.name!r} ({how})")
            if setting.default is not None:
                options[setting.name] = setting.default
    return options
