"""Configuration: one TOML file, secrets named by environment variable.

Discovery order: ``--config``, then ``$LOA_CONFIG``, then ``./config.toml``.
``$LOA_DATABASE_URL`` overrides the file's database URL (containers, CI).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from loa.campaign import NAME as CAMPAIGN_NAME
from loa.errors import ConfigError, SecretMissing

DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
TOP_LEVEL_KEYS = {
    "database_url", "database_url_env", "timezone", "language", "campaigns_dir", "templates_dir",
    "defaults", "gateways", "send", "policy", "serve", "digest",
}
SERVE_KEYS = {"host", "port", "public_url", "opt_out_reply", "workers", "arrivals_token_env", "arrivals_folder",
              "greet_every", "report_token_env"}
DIGEST_KEYS = {"folder", "at", "campaigns", "formats"}
DIGEST_AT = re.compile(r"^(\d{1,2}):(\d{2})$")
POLICY_KEYS = {"advertising_frequency_cap", "public_frequency_cap", "frequency_hours"}
DEFAULT_KEYS = {"sms_gateway", "zalo_gateway"}
SEND_KEYS = {"threads", "batch_size", "lease_seconds", "limiter", "poll_interval"}
COMMON_GATEWAY_KEYS = {"type", "rate", "burst", "description"}
# Names that hold a secret whatever the gateway type: a literal value is refused.
SECRET_NAME = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|secret_?key|auth)(_|$)", re.I)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQLITE_URL = re.compile(r"^sqlite(\+\w+)?:///")
URL_PASSWORD = re.compile(r"^[a-z0-9+]+://[^/@:]*:[^/@]+@", re.I)


@dataclasses.dataclass(frozen=True)
class GatewaySpec:
    """A configured gateway, secrets still unresolved (named by env var)."""

    name: str
    type: str
    settings: Mapping[str, Any]       # plain settings, without type/rate/burst
    rate: float | None
    burst: int | None
    source: str                       # "config.toml: gateways.NAME" for messages


@dataclasses.dataclass(frozen=True)
class DigestSpec:
    """The daily report written to a folder ([digest])."""

    folder: Path
    cron: str                           # five fields, read in the configuration's time zone
    campaigns: tuple[str, ...] | None   # None: every campaign that has runs
    formats: tuple[str, ...]


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

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "built-in defaults"

    def gateway(self, name: str) -> GatewaySpec:
        try:
            return self.gateways[name]
        except KeyError:
            known = ", ".join(sorted(self.gateways)) or "none configured"
            raise ConfigError(f"{self.label}: unknown gateway {name!r} (configured: {known})") from None

    def default_gateway(self, channel: str) -> str | None:
        return self.defaults.get(f"{channel}_gateway")


def discover(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Find the configuration file, or say how to provide one."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    env = os.environ.get("LOA_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"$LOA_CONFIG points to {path}, which does not exist")
        return path
    path = Path("config.toml")
    if path.is_file():
        return path
    raise ConfigError(
        "no configuration found: pass --config FILE, set $LOA_CONFIG, "
        "or copy config.example.toml to ./config.toml"
    )


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
    label = str(path) if path else "config"
    base = root or (path.parent if path else Path.cwd())
    _reject_unknown(raw, TOP_LEVEL_KEYS, label, "")
    gateways = {
        name: _gateway_spec(name, table, label)
        for name, table in _table(raw, "gateways", label).items()
    }
    defaults = {str(k): str(v) for k, v in _table(raw, "defaults", label).items()}
    _reject_unknown(defaults, DEFAULT_KEYS, label, "defaults.")
    for key, gw in defaults.items():
        if gw not in gateways:
            raise ConfigError(f"{label}: defaults.{key}: no gateway named {gw!r} in [gateways]")
    send = dict(_table(raw, "send", label))
    _reject_unknown(send, SEND_KEYS, label, "send.")
    if send.get("limiter", "database") not in ("database", "memory"):
        raise ConfigError(f"{label}: send.limiter: must be \"database\" (shared by every worker) or \"memory\"")
    policy = dict(_table(raw, "policy", label))
    _reject_unknown(policy, POLICY_KEYS, label, "policy.")
    serve = dict(_table(raw, "serve", label))
    _reject_unknown(serve, SERVE_KEYS, label, "serve.")
    token_env = serve.get("report_token_env")
    if token_env is not None and (not isinstance(token_env, str) or not ENV_NAME.match(token_env)):
        raise ConfigError(f"{label}: serve.report_token_env: must name an environment variable, got {token_env!r}")
    for key, value in policy.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{label}: policy.{key}: must be a non-negative number")
    return Config(
        path=path,
        database_url=_database_url(raw, label, base),
        timezone=_timezone(raw.get("timezone", DEFAULT_TIMEZONE), label),
        campaigns_dir=_folder(raw.get("campaigns_dir", "campaigns"), base),
        templates_dir=_folder(raw.get("templates_dir", "templates"), base),
        gateways=gateways,
        defaults=defaults,
        send=send,
        policy=policy,
        serve=serve,
        digest=_digest(raw, label, base),
        language=_language(raw, label),
    )


def _language(raw: Mapping[str, Any], label: str) -> str:
    from loa.i18n import DEFAULT, LANGUAGES

    value = raw.get("language", DEFAULT)
    if value not in LANGUAGES:
        raise ConfigError(f"{label}: language: {value!r} is not a language loa speaks (languages: "
                          f"{', '.join(LANGUAGES)})")
    return str(value)


def _table(raw: Mapping[str, Any], key: str, label: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{label}: {key} must be a table")
    return value


def _reject_unknown(table: Mapping[str, Any], known: set[str], label: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{label}: {prefix}{key}: unknown key (known: {', '.join(sorted(known))})")


def _database_url(raw: Mapping[str, Any], label: str, base: Path) -> str:
    url = str(raw.get("database_url", "sqlite:///loa.db"))
    # checked before the override: a password in the file is refused whatever the environment
    if URL_PASSWORD.match(url):
        raise ConfigError(
            f"{label}: database_url: contains a password; put the URL in an environment "
            "variable and name it with database_url_env"
        )
    env_override = os.environ.get("LOA_DATABASE_URL")
    if env_override:
        return env_override
    if "database_url_env" in raw:
        return _env(str(raw["database_url_env"]), f"{label}: database_url_env")
    return resolve_sqlite_path(url, base)


def resolve_sqlite_path(url: str, base: Path) -> str:
    """Make a relative SQLite path relative to the configuration's folder."""
    match = _SQLITE_URL.match(url)   # sqlite:/// or sqlite+driver:///
    if match and not url.startswith(match[0] + "/") and not url[match.end():].startswith(":memory:"):
        rest = url[match.end():]
        return match[0] + str((base / rest).resolve())
    return url


def _timezone(name: Any, label: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):   # "Asia" is a folder of the tzdata package
        raise ConfigError(f"{label}: timezone: unknown time zone {name!r}") from None


def _folder(value: Any, base: Path) -> Path:
    path = Path(str(value))
    return path if path.is_absolute() else (base / path).resolve()


def _digest(raw: Mapping[str, Any], label: str, base: Path) -> DigestSpec | None:
    if "digest" not in raw:
        return None
    table = _table(raw, "digest", label)
    _reject_unknown(table, DIGEST_KEYS, label, "digest.")
    where = f"{label}: digest"
    folder = table.get("folder")
    if not isinstance(folder, str) or not folder.strip():
        raise ConfigError(f"{where}.folder: missing; name the folder the daily report goes to, "
                          "e.g. folder = \"reports\"")
    return DigestSpec(folder=_folder(folder, base), cron=_digest_cron(table.get("at", "07:00"), where),
                      campaigns=_digest_campaigns(table.get("campaigns"), where),
                      formats=_digest_formats(table.get("formats", ["html", "csv"]), where))


def _digest_cron(value: Any, where: str) -> str:
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
            raise ConfigError(f"{where}.at: not a valid cron string {text!r}: {exc}") from None
        return text
    raise ConfigError(f"{where}.at: must be a time of day like \"07:00\" or a cron string like "
                      f"\"0 7 * * 1-5\", got {value!r}")


def _digest_campaigns(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and CAMPAIGN_NAME.match(v)
                                                           for v in value):
        raise ConfigError(f"{where}.campaigns: must be a non-empty list of campaign names, got {value!r} "
                          "(leave it out for every campaign that has runs)")
    return tuple(value)


def _digest_formats(value: Any, where: str) -> tuple[str, ...]:
    from loa.report import FORMATS   # the report owns its formats; it loads the database layer

    if not isinstance(value, list) or not value or any(v not in FORMATS for v in value):
        raise ConfigError(f"{where}.formats: must be a non-empty list of {', '.join(map(repr, FORMATS))}, "
                          f"got {value!r}")
    return tuple(dict.fromkeys(value))


def _gateway_spec(name: str, table: Any, label: str) -> GatewaySpec:
    where = f"{label}: gateways.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table")
    if "type" not in table:
        raise ConfigError(f"{where}: missing 'type' (e.g. type = \"simulator\")")
    for key, value in table.items():
        if key.endswith("_env"):
            if not isinstance(value, str) or not ENV_NAME.match(value):
                raise ConfigError(f"{where}.{key}: must name an environment variable, got {value!r}")
        elif SECRET_NAME.search(key) and value not in ("", None):
            raise ConfigError(
                f"{where}.{key}: literal secrets are not allowed in configuration files; "
                f"export the secret and write {key}_env = \"VARIABLE_NAME\""
            )
    rate = table.get("rate")
    burst = table.get("burst")
    if rate is not None and (not isinstance(rate, int | float) or rate <= 0):
        raise ConfigError(f"{where}.rate: must be a positive number of SMS parts per second")
    if burst is not None and (not isinstance(burst, int) or burst < 1):
        raise ConfigError(f"{where}.burst: must be a positive integer")
    settings = {k: v for k, v in table.items() if k not in COMMON_GATEWAY_KEYS}
    return GatewaySpec(name, str(table["type"]), settings, rate, burst, where)


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
        name = key[:-4] if key.endswith("_env") else key
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
