"""Configuration: discovery, paths, the database URL, secrets, gateway settings."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest

from loa.config import DEFAULT_TIMEZONE, GatewaySpec, discover, load, resolve_settings
from loa.errors import ConfigError, SecretMissing
from providers.base import Setting


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No configuration or database from the environment unless a test sets one."""
    monkeypatch.delenv("LOA_CONFIG", raising=False)
    monkeypatch.delenv("LOA_DATABASE_URL", raising=False)


def cfg(folder: Path, body: str, name: str = "config.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


# -- discovery ------------------------------------------------------------------

@pytest.fixture
def three_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An explicit file, one named by $LOA_CONFIG and ./config.toml, each with its own zone."""
    paths = {
        "explicit": cfg(tmp_path / "explicit", 'timezone = "Asia/Bangkok"', "mine.toml"),
        "env": cfg(tmp_path / "env", 'timezone = "Asia/Tokyo"', "loa.toml"),
        "cwd": cfg(tmp_path / "cwd", 'timezone = "Europe/Paris"'),
    }
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("LOA_CONFIG", str(paths["env"]))
    return paths


def test_explicit_path_wins_over_env_and_cwd(three_configs: dict[str, Path]) -> None:
    config = load(three_configs["explicit"])
    assert config.path == three_configs["explicit"]
    assert config.timezone.key == "Asia/Bangkok"


def test_env_wins_over_cwd(three_configs: dict[str, Path]) -> None:
    config = load()
    assert config.path == three_configs["env"]
    assert config.timezone.key == "Asia/Tokyo"


def test_cwd_config_toml_is_last(three_configs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOA_CONFIG")
    config = load()
    assert config.path.resolve() == three_configs["cwd"].resolve()
    assert config.timezone.key == "Europe/Paris"


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist"):
        load(tmp_path / "nope.toml")


def test_loa_config_pointing_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg(tmp_path, "")                       # a ./config.toml must not be used instead
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOA_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"\$LOA_CONFIG points to .*gone\.toml, which does not exist"):
        discover()


def test_no_config_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no configuration found: pass --config FILE, set \\$LOA_CONFIG"):
        load()


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    path = cfg(tmp_path, "timezone = \n")
    with pytest.raises(ConfigError, match=r"config\.toml: not valid TOML"):
        load(path)


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes('# Hà Nội\ntimezone = "Asia/Ho_Chi_Minh"\n'.encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(path)


# -- paths and the database URL -------------------------------------------------

def test_relative_sqlite_path_is_beside_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = cfg(tmp_path / "etc" / "loa", 'database_url = "sqlite:///data/loa.db"')
    monkeypatch.chdir(tmp_path)             # not the config's folder
    config = load("etc/loa/config.toml")
    assert config.database_url == f"sqlite:///{(tmp_path / 'etc' / 'loa' / 'data' / 'loa.db').resolve()}"
    assert config.campaigns_dir == (path.parent / "campaigns").resolve()
    assert config.templates_dir == (path.parent / "templates").resolve()


def test_default_database_is_loa_db_beside_the_config(tmp_path: Path) -> None:
    config = load(cfg(tmp_path, ""))
    assert config.database_url == f"sqlite:///{(tmp_path / 'loa.db').resolve()}"
    assert config.timezone.key == DEFAULT_TIMEZONE


def test_sqlite_url_with_driver_is_resolved_too(tmp_path: Path) -> None:
    config = load(cfg(tmp_path, 'database_url = "sqlite+pysqlite:///loa.db"'))
    assert config.database_url == f"sqlite+pysqlite:///{(tmp_path / 'loa.db').resolve()}"


@pytest.mark.parametrize("url", ["sqlite:////var/lib/loa/loa.db", "sqlite:///:memory:",
                                 "postgresql+psycopg://loa@db:5432/loa"])
def test_absolute_memory_and_server_urls_are_kept(tmp_path: Path, url: str) -> None:
    assert load(cfg(tmp_path, f'database_url = "{url}"')).database_url == url


def test_loa_database_url_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = cfg(tmp_path, 'database_url = "sqlite:///loa.db"')
    monkeypatch.setenv("LOA_DATABASE_URL", "postgresql+psycopg://ci@127.0.0.1/ci")
    assert load(path).database_url == "postgresql+psycopg://ci@127.0.0.1/ci"


def test_database_url_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = cfg(tmp_path, 'database_url_env = "MY_DB_URL"')
    monkeypatch.setenv("MY_DB_URL", "postgresql+psycopg://loa:pw@db/loa")
    assert load(path).database_url == "postgresql+psycopg://loa:pw@db/loa"


def test_database_url_env_unset_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_DB_URL", raising=False)
    with pytest.raises(SecretMissing, match="database_url_env: environment variable MY_DB_URL is not set"):
        load(cfg(tmp_path, 'database_url_env = "MY_DB_URL"'))


@pytest.mark.parametrize("override", [None, "sqlite:///elsewhere.db"])
def test_password_in_database_url_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             override: str | None) -> None:
    if override:   # the file is wrong whatever the environment says
        monkeypatch.setenv("LOA_DATABASE_URL", override)
    path = cfg(tmp_path, 'database_url = "postgresql+psycopg://loa:hunter2@db:5432/loa"')
    with pytest.raises(ConfigError, match="database_url: contains a password") as info:
        load(path)
    assert "database_url_env" in str(info.value)
    assert "hunter2" not in str(info.value)


# -- keys, time zones, gateways ----------------------------------------------------

def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.toml: databse_url: unknown key, did you mean 'database_url'\? "
                                          r"\(known: .*database_url"):
        load(cfg(tmp_path, 'databse_url = "sqlite:///x.db"'))


def test_unknown_send_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="send.thread: unknown key"):
        load(cfg(tmp_path, "[send]\nthread = 4\n"))


@pytest.mark.parametrize("zone", ["Asia/Hanoi", "Mars/Olympus", "", "../etc/passwd", "Asia"])
def test_unknown_time_zone(tmp_path: Path, zone: str) -> None:
    with pytest.raises(ConfigError, match=r"timezone: unknown time zone"):
        load(cfg(tmp_path, f'timezone = "{zone}"'))


def test_gateways_and_defaults(tmp_path: Path) -> None:
    config = load(cfg(tmp_path, """
        [defaults]
        sms_gateway = "tw"
        [gateways.tw]
        type = "twilio"
        rate = 10
        burst = 5
        account_sid = "AC123"
        auth_token_env = "TW_TOKEN"
    """))
    spec = config.gateway("tw")
    assert (spec.type, spec.rate, spec.burst) == ("twilio", 10, 5)
    assert dict(spec.settings) == {"account_sid": "AC123", "auth_token_env": "TW_TOKEN"}
    assert config.default_gateway("sms") == "tw"
    assert config.default_gateway("zalo") is None
    with pytest.raises(ConfigError, match=r"unknown gateway 'nope' \(configured: tw\)"):
        config.gateway("nope")


def test_literal_secret_is_refused(tmp_path: Path) -> None:
    path = cfg(tmp_path, """
        [gateways.tw]
        type = "twilio"
        auth_token = "s3cr3t-value"
    """)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "gateways.tw.auth_token" in message
    assert 'auth_token_env = "VARIABLE_NAME"' in message
    assert "s3cr3t-value" not in message


@pytest.mark.parametrize("key", ["api_key", "password", "token", "secret", "client_secret"])
def test_secret_looking_names_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"gateways.g.{key}: literal secrets are not allowed"):
        load(cfg(tmp_path, f'[gateways.g]\ntype = "x"\n{key} = "v"\n'))


def test_env_setting_must_name_a_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gateways.g.token_env: must name an environment variable"):
        load(cfg(tmp_path, '[gateways.g]\ntype = "x"\ntoken_env = "not a name!"\n'))


def test_default_must_name_a_configured_gateway(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="defaults.sms_gateway: no gateway named 'sim'"):
        load(cfg(tmp_path, '[defaults]\nsms_gateway = "sim"\n'))


def test_gateway_without_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gateways.g: missing 'type'"):
        load(cfg(tmp_path, "[gateways.g]\nrate = 3\n"))


@pytest.mark.parametrize(("line", "what"), [("rate = 0", "rate"), ("rate = \"fast\"", "rate"),
                                            ("burst = 0", "burst"), ("burst = 1.5", "burst")])
def test_bad_rate_or_burst(tmp_path: Path, line: str, what: str) -> None:
    with pytest.raises(ConfigError, match=f"gateways.g.{what}: must be a positive"):
        load(cfg(tmp_path, f'[gateways.g]\ntype = "x"\n{line}\n'))


# -- resolve_settings ------------------------------------------------------------

DECLARED = [
    Setting("account_sid"),
    Setting("auth_token", secret=True),
    Setting("sender", required=False, default="LOA"),
    Setting("timeout", required=False),
]


def spec_for(tmp_path: Path, body: str) -> GatewaySpec:
    """A gateway as the adapter gets it, checked again against ``DECLARED`` when it is built
    (the configuration's own check uses the declarations of the type's adapter)."""
    return GatewaySpec("tw", "twilio", tomllib.loads(textwrap.dedent(body)), None, None,
                       f"{tmp_path / 'config.toml'}: gateways.tw")


def test_resolve_settings_reads_secrets_and_applies_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_TOKEN", "tok-123")
    spec = spec_for(tmp_path, 'account_sid = "AC1"\nauth_token_env = "TW_TOKEN"\n')
    assert resolve_settings(spec, DECLARED) == {"account_sid": "AC1", "auth_token": "tok-123", "sender": "LOA"}


def test_resolve_settings_missing_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TW_TOKEN", raising=False)
    spec = spec_for(tmp_path, 'account_sid = "AC1"\nauth_token_env = "TW_TOKEN"\n')
    with pytest.raises(SecretMissing, match=r"gateways\.tw\.auth_token_env: environment variable TW_TOKEN is not set"):
        resolve_settings(spec, DECLARED)


def test_resolve_settings_empty_env_var_counts_as_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_TOKEN", "")
    spec = spec_for(tmp_path, 'account_sid = "AC1"\nauth_token_env = "TW_TOKEN"\n')
    with pytest.raises(SecretMissing, match="TW_TOKEN"):
        resolve_settings(spec, DECLARED)


def test_resolve_settings_unknown_setting(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, 'account_sid = "AC1"\nsendr = "X"\n')
    with pytest.raises(ConfigError, match=r"gateways\.tw\.sendr: unknown setting for gateway type 'twilio' "
                                          r"\(known: account_sid, auth_token, sender, timeout\)"):
        resolve_settings(spec, DECLARED)


def test_resolve_settings_required_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_TOKEN", "tok")
    spec = spec_for(tmp_path, 'auth_token_env = "TW_TOKEN"\n')
    with pytest.raises(ConfigError, match=r"gateways\.tw: missing required setting 'account_sid'"):
        resolve_settings(spec, DECLARED)


def test_resolve_settings_required_secret_missing_says_env(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, 'account_sid = "AC1"\n')
    with pytest.raises(ConfigError, match=r"missing required setting 'auth_token' \(auth_token_env = \"VARIABLE\"\)"):
        resolve_settings(spec, DECLARED)


def test_resolve_settings_refuses_literal_for_declared_secret(tmp_path: Path) -> None:
    # "pin" does not look like a secret to the file check; the provider says it is one
    spec = spec_for(tmp_path, 'pin = "1234"\n')
    with pytest.raises(ConfigError, match=r"gateways\.tw\.pin: literal secrets are not allowed; write pin_env"):
        resolve_settings(spec, [Setting("pin", secret=True)])


def test_the_example_configuration_loads_with_every_commented_section_enabled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.example.toml is what users copy: as shipped, and with every commented-out
    gateway, digest and serve setting switched on, it must load and build every gateway."""
    import re

    from loa.gateways import build

    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    assert load(example).gateway("simulator").type == "simulator"
    text = example.read_text(encoding="utf-8")
    enabled = re.sub(r"(?m)^# (?=\[|[a-z_]+ += )", "", text)
    assert enabled.count("[gateways.") == text.count("[gateways.") and "\n[digest]" in enabled
    path = tmp_path / "config.toml"
    path.write_text(enabled, encoding="utf-8")
    for var in set(re.findall(r'_env = "([A-Z_]+)"', enabled)):
        # values of the right shape: the adapters check them (an SMPP password has at most 8 characters)
        monkeypatch.setenv(var, {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "SMPP_PASSWORD": "secret1",
                                 "LOA_DATABASE_URL_SECRET": f"sqlite:///{tmp_path / 'loa.db'}"}.get(var, "example"))
    config = load(path)
    assert config.digest is not None and list(config.digest.formats) == ["html", "csv"]
    assert set(config.gateways) == {"simulator", "simulator-http", "dry-run", "twilio", "zalo", "esms", "smsc"}
    for name in config.gateways:
        gateway = build(config, name)
        try:
            assert gateway.rate > 0
        finally:
            gateway.provider.close()


def test_the_example_serve_comment_names_every_route_loa_serve_answers() -> None:
    """The comment above [serve] is where an operator learns what to expose: every route
    of loa.web's table, so none is published (or firewalled) by surprise."""
    import re

    from loa import web

    routes = re.findall(r"^``[A-Z|]+ (/\S+)``", web.__doc__ or "", re.MULTILINE)
    assert {"/hooks/NAME", "/l/CODE", "/report", "/arrivals", "/healthz", "/metrics"} <= set(routes)
    text = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text(encoding="utf-8")
    comment = re.search(r"((?:^#.*\n)+)\[serve\]", text, re.MULTILINE)
    assert comment is not None
    assert [r for r in routes if r not in comment.group(1)] == []
