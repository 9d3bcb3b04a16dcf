"""Config loading: defaults, file, environment, overrides, and every refusal."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from ct_actors.config import (
    BIG_PROVIDER_DOMAINS,
    Config,
    ConfigError,
    SmtpConfig,
    env_var_name,
    key_specs,
    load_config,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "ct-actors.toml"
DOCS = REPO / "docs" / "configuration.md"

GOOD_SMTP = """
[smtp]
helo_name = "probe.mail.acme-corp.io"
mail_from = "postmaster@acme-corp.io"
"""


def write(tmp_path: Path, text: str, name: str = "ct.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(
    tmp_path: Path,
    text: str = GOOD_SMTP,
    env: dict[str, str] | None = None,
    overrides: dict[str, object] | None = None,
) -> Config:
    return load_config(write(tmp_path, text), env=env or {}, overrides=overrides)


def refused(
    tmp_path: Path,
    text: str = GOOD_SMTP,
    env: dict[str, str] | None = None,
    overrides: dict[str, object] | None = None,
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env, overrides)
    return info.value


# ─── defaults ────────────────────────────────────────────────────────────────────────────────


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert cfg.database.url == ""  # unset: production commands refuse (issue 11)
    assert cfg.database.data_directory is None
    assert (cfg.database.min_connections, cfg.database.max_connections) == (1, 4)
    assert cfg.database.lease_seconds == 300
    assert cfg.dns.nameservers == ()
    assert (cfg.dns.port, cfg.dns.timeout, cfg.dns.attempts, cfg.dns.max_in_flight) == (
        53,
        2.0,
        2,
        256,
    )
    s = cfg.smtp
    assert s.port == 25
    assert s.source_address is None
    assert (s.connect_timeout, s.command_timeout, s.quit_timeout) == (10.0, 30.0, 5.0)
    assert s.starttls == "opportunistic"
    assert (s.max_connections, s.max_connections_per_host) == (64, 4)
    assert s.initial_connections_per_host == 1
    assert (s.dead_host_backoff, s.dead_host_backoff_max) == (300.0, 3600.0)
    assert s.max_recipients_per_session == 10
    assert (s.session_reuse_seconds, s.pool_idle_seconds) == (30, 60)
    assert s.dead_host_backoff == 300.0
    assert (s.greylist_retry_delay, s.greylist_max_retries) == (300.0, 4)
    assert (s.max_errors_per_session, s.max_fresh_sessions, s.remote_attempts) == (8, 3, 3)
    assert (s.max_rejected_rcpts_per_host, s.rejected_rcpts_window) == (8, 60.0)
    assert (s.slow_reply_seconds, s.slow_host_seconds, s.slow_connections_share) == (
        10.0,
        3600.0,
        0.25,
    )
    p = cfg.probe
    assert (p.mode, p.names_query, p.max_in_flight, p.claim_batch, p.defer_seconds) == (
        "smtp",
        "",
        512,
        200,
        600,
    )
    assert (cfg.writer.batch_size, cfg.writer.flush_interval) == (500, 0.5)
    assert cfg.database.command_timeout == 15.0
    assert (cfg.log.format, cfg.log.level, cfg.log.stats_interval) == ("json", "info", 30.0)
    assert cfg.daemon.owner == f"{socket.gethostname()}:{os.getpid()}"
    assert cfg.daemon.drain_deadline == 60.0


def test_dataclass_defaults_match_loader_defaults(tmp_path: Path) -> None:
    loaded = load(tmp_path, overrides={"probe.mode": "mx-only"}, text="")
    plain = Config()
    for key in key_specs():
        if key not in ("toolbox.path", "probe.mode"):
            assert loaded.value(key) == plain.value(key), key


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    with pytest.raises(AttributeError):
        cfg.smtp.port = 2525  # type: ignore[misc]


def test_no_file_uses_defaults_and_env() -> None:
    cfg = load_config(None, env={"CT_PROBE_MODE": "mx-only"})
    assert cfg.probe.mode == "mx-only"
    assert cfg.source is None
    assert cfg.toolbox.path == Path.cwd() / "config" / "SNAP_ON_TOOLBOX.yaml"


def test_smtp_mode_requires_helo_and_mail_from() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={})
    msg = info.value.message
    assert "smtp.helo_name is not set" in msg
    assert "fully-qualified" in msg and "blocklist" in msg
    assert "smtp.mail_from is not set" in msg
    assert "mx-only" in msg  # tells the operator the alternative
    assert len(info.value.errors) == 2


def test_commands_that_never_probe_need_no_smtp_identity() -> None:
    # `migrate` on a fresh server, before the operator has chosen the HELO name.
    cfg = load_config(None, env={}, probing=False)
    assert (cfg.probe.mode, cfg.smtp.helo_name, cfg.smtp.mail_from) == ("smtp", None, None)
    with pytest.raises(ConfigError) as info:  # every other key is still checked
        load_config(None, env={"CT_SMTP_PORT": "0"}, probing=False)
    assert "smtp.port" in info.value.message


def test_mx_only_mode_needs_no_smtp_identity() -> None:
    cfg = load_config(None, env={}, overrides={"probe.mode": "mx-only"})
    assert cfg.smtp.helo_name is None and cfg.smtp.mail_from is None


# ─── the shipped example and docs ────────────────────────────────────────────────────────────


def test_example_refused_in_smtp_mode_because_of_placeholders() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE, env={})
    msg = info.value.message
    assert "'probe.example.net' is the example placeholder" in msg
    assert "'postmaster@probe.example.net' is the example placeholder" in msg
    assert "set it to" in msg


def test_example_loads_in_mx_only_mode_with_documented_defaults() -> None:
    cfg = load_config(EXAMPLE, env={"CT_PROBE_MODE": "mx-only"})
    defaults = Config()
    for key in key_specs():
        # database.url has no default; the example names one explicitly.
        skip = ("smtp.helo_name", "smtp.mail_from", "toolbox.path", "probe.mode", "database.url")
        if key in skip:
            continue
        assert cfg.value(key) == defaults.value(key), f"example differs from default: {key}"
    assert cfg.toolbox.path == EXAMPLE.parent.resolve() / "SNAP_ON_TOOLBOX.yaml"
    assert cfg.toolbox.path.exists()


def test_example_and_docs_mention_every_key() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    docs = DOCS.read_text(encoding="utf-8")
    for dotted in key_specs():
        section, key = dotted.split(".")
        assert f"[{section}]" in example
        assert re.search(rf"^#? ?{key} = ", example, re.MULTILINE), dotted
        assert f"`{dotted}`" in docs, dotted
        assert env_var_name(dotted) in docs, dotted


# ─── values from the file ────────────────────────────────────────────────────────────────────


def test_file_values(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        GOOD_SMTP
        + """
port = 2525
source_address = "2001:db8::10"
connect_timeout = 3
starttls = "never"
[dns]
nameservers = ["127.0.0.1", "2001:4860:4860::8888"]
[log]
level = "DEBUG"
format = "console"
""",
    )
    assert cfg.smtp.port == 2525
    assert cfg.smtp.source_address == "2001:db8::10"
    assert cfg.smtp.connect_timeout == 3.0 and isinstance(cfg.smtp.connect_timeout, float)
    assert cfg.smtp.starttls == "never"
    assert cfg.dns.nameservers == ("127.0.0.1", "2001:4860:4860::8888")
    assert cfg.log.level == "debug"
    assert cfg.log.format == "console"
    assert cfg.smtp.helo_name == "probe.mail.acme-corp.io"
    assert cfg.smtp.mail_from == "postmaster@acme-corp.io"
    assert cfg.smtp.reverse_path == "<postmaster@acme-corp.io>"


# ─── environment and overrides ───────────────────────────────────────────────────────────────


def test_env_overrides(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        GOOD_SMTP + "port = 2600\n",
        env={
            "CT_DATABASE_URL": "postgresql://ct:pw@db.internal:5432/outreach",
            "CT_PROBE_MODE": "mx-only",
            "CT_DNS_NAMESERVERS": "127.0.0.1, 10.0.0.2",
            "CT_SMTP_PORT": "2525",
            "CT_SMTP_CONNECT_TIMEOUT": "1.5",
            "CT_LOG_LEVEL": "warning",
            "CT_ACTORS_CONFIG": "/etc/whatever.toml",  # not ours: ignored
            "HOME": "/root",
        },
    )
    assert cfg.database.url == "postgresql://ct:pw@db.internal:5432/outreach"
    assert cfg.probe.mode == "mx-only"
    assert cfg.dns.nameservers == ("127.0.0.1", "10.0.0.2")
    assert cfg.smtp.port == 2525  # env beats the file
    assert cfg.smtp.connect_timeout == 1.5
    assert cfg.log.level == "warning"


def test_env_empty_list_and_unset_optional(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        GOOD_SMTP + '[dns]\nnameservers = ["1.1.1.1"]\n',
        env={"CT_DNS_NAMESERVERS": "", "CT_SMTP_SOURCE_ADDRESS": ""},
    )
    assert cfg.dns.nameservers == ()
    assert cfg.smtp.source_address is None


def test_overrides_beat_env(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        env={"CT_SMTP_PORT": "2525"},
        overrides={"smtp.port": 2626, "writer.flush_interval": "0.25"},
    )
    assert cfg.smtp.port == 2626
    assert cfg.writer.flush_interval == 0.25


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("CT_SMTP_PORT", "abc", "expected an integer, got 'abc'"),
        ("CT_SMTP_PORT", "70000", "must be between 1 and 65535, got 70000"),
        ("CT_DNS_TIMEOUT", "fast", "expected a number, got 'fast'"),
        ("CT_DNS_TIMEOUT", "0", "must be > 0, got 0.0"),
        ("CT_DNS_TIMEOUT", "nan", "must be a finite number"),
        ("CT_DNS_NAMESERVERS", "127.0.0.1,resolver.local", "'resolver.local' is not an IPv4"),
        ("CT_PROBE_MODE", "full", "must be one of 'smtp', 'mx-only', got 'full'"),
    ],
)
def test_bad_env_values_name_the_variable(
    tmp_path: Path, var: str, value: str, expected: str
) -> None:
    err = refused(tmp_path, env={var: value})
    assert len(err.errors) == 1
    assert err.errors[0].startswith(f"environment variable {var} (")
    assert expected in err.errors[0]


def test_unknown_env_key_in_known_section_is_refused(tmp_path: Path) -> None:
    err = refused(tmp_path, env={"CT_SMTP_HELO": "x.y.z"})
    assert err.errors == (
        "environment variable CT_SMTP_HELO: unknown key smtp.helo "
        "(did you mean CT_SMTP_HELO_NAME?)",
    )


def test_unknown_override_is_refused(tmp_path: Path) -> None:
    err = refused(tmp_path, overrides={"smtp.max_conections": 3})
    assert err.errors == (
        "override smtp.max_conections: unknown key (did you mean 'smtp.max_connections'?)",
    )


# ─── unknown keys and types in the file ──────────────────────────────────────────────────────


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_SMTP + "max_conections = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.errors == (
        f"{path}: unknown key smtp.max_conections (did you mean 'smtp.max_connections'?)",
    )
    assert str(path) in info.value.message


def test_key_in_wrong_section_suggests_right_section(tmp_path: Path) -> None:
    err = refused(tmp_path, GOOD_SMTP + 'nameservers = ["1.1.1.1"]\n')
    assert "unknown key smtp.nameservers (did you mean 'dns.nameservers'?)" in err.message


def test_unknown_section_suggests_closest(tmp_path: Path) -> None:
    err = refused(tmp_path, GOOD_SMTP + "[databse]\nurl = 'postgresql://x/y'\n")
    assert "unknown section [databse] (did you mean 'database'?)" in err.message


def test_section_must_be_table(tmp_path: Path) -> None:
    err = refused(tmp_path, 'log = "debug"\n' + GOOD_SMTP)
    assert "log: expected a table, got a string" in err.message


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[smtp]\nport = "25"', "smtp.port: expected an integer, got a string"),
        ("[smtp]\nport = true", "smtp.port: expected an integer, got a boolean"),
        ("[smtp]\nport = 25.0", "smtp.port: expected an integer, got a float"),
        ("[smtp]\nport = 0", "smtp.port: must be between 1 and 65535, got 0"),
        ("[smtp]\nport = 65536", "smtp.port: must be between 1 and 65535, got 65536"),
        ("[dns]\nport = -1", "dns.port: must be between 1 and 65535, got -1"),
        ("[smtp]\nconnect_timeout = 0", "smtp.connect_timeout: must be > 0, got 0"),
        ("[smtp]\ncommand_timeout = -3.0", "smtp.command_timeout: must be > 0"),
        ('[smtp]\nquit_timeout = "5"', "smtp.quit_timeout: expected a number, got a string"),
        ("[smtp]\nquit_timeout = inf", "smtp.quit_timeout: must be a finite number"),
        ("[smtp]\nmax_connections = 0", "smtp.max_connections: must be >= 1, got 0"),
        ("[smtp]\nslow_reply_seconds = 0", "smtp.slow_reply_seconds: must be > 0, got 0"),
        ("[smtp]\nslow_connections_share = 1.5", "smtp.slow_connections_share: must be"),
        ("[smtp]\nslow_connections_share = 0", "smtp.slow_connections_share: must be"),
        ("[smtp]\nmax_recipients_per_session = 101", "must be between 1 and 100, got 101"),
        ('[smtp]\nstarttls = "always"', "smtp.starttls: must be one of 'opportunistic', 'never'"),
        ('[dns]\nnameservers = "1.1.1.1"', "dns.nameservers: expected an array of strings"),
        ("[dns]\nnameservers = [1]", "dns.nameservers: expected an array of strings"),
        ('[dns]\nnameservers = ["dns.google"]', "'dns.google' is not an IPv4/IPv6 address"),
        ('[smtp]\nsource_address = "eth0"', "'eth0' is not an IPv4/IPv6 address"),
        ('[log]\nlevel = "verbose"', "log.level: must be one of"),
        ('[log]\nformat = "jsn"', "(did you mean 'json'?)"),
        ("[log]\nstats_interval = 0", "log.stats_interval: must be > 0"),
        ("[daemon]\ndrain_deadline = -1", "daemon.drain_deadline: must be > 0"),
        ('[daemon]\nowner = "  "', "daemon.owner: must be a non-empty string"),
        ("[writer]\nbatch_size = 0", "writer.batch_size: must be >= 1"),
        ('[database]\nurl = "mysql://u:hunter22@h/db"', "must be a postgresql:// URL"),
        ('[toolbox]\npath = ""', "toolbox.path: must not be empty"),
        # Issue 10: values PostgreSQL cannot turn into a timestamp used to pass here and fail
        # every claim/deferral (exit 1, restarted forever).
        ("[database]\nlease_seconds = 9223372036854775807", "must be between 1 and 86400"),
        ("[probe]\ndefer_seconds = 100000000000", "must be between 1 and 2592000"),
        ('[smtp]\nallow_networks = ["10.0.0.1/8"]', "smtp.allow_networks: '10.0.0.1/8'"),
        ("[probe]\nnames_timeout = 0", "probe.names_timeout: must be"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, snippet: str, expected: str) -> None:
    # GOOD_SMTP ends inside its [smtp] table, so an [smtp] snippet's keys are appended to it
    # (TOML refuses a table opened twice).
    text = GOOD_SMTP + snippet.removeprefix("[smtp]\n")
    err = refused(tmp_path, text + "\n")
    assert any(expected in e for e in err.errors), err.message


def test_bad_url_message_does_not_leak_password(tmp_path: Path) -> None:
    err = refused(tmp_path, GOOD_SMTP + '[database]\nurl = "mysql://u:hunter22@h/db"\n')
    assert "hunter22" not in err.message


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    err = refused(
        tmp_path,
        GOOD_SMTP + "port = 0\nbogus = 1\n[dns]\ntimeout = -1\n",
        env={"CT_WRITER_BATCH_SIZE": "x"},
    )
    assert len(err.errors) == 4
    assert err.message.startswith("configuration refused (")
    assert "4 problem(s)" in err.message


def test_invalid_toml_reports_position(tmp_path: Path) -> None:
    path = write(tmp_path, "[smtp]\nport = = 25\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.message.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml", env={})


# ─── SMTP identity ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("domain", BIG_PROVIDER_DOMAINS)
def test_big_provider_helo_is_refused(tmp_path: Path, domain: str) -> None:
    for name in (domain, f"mx1.{domain}", domain.upper()):
        err = refused(tmp_path, overrides={"smtp.helo_name": name})
        assert f"belongs to {domain}" in err.message
        assert "never present itself as a big mail provider" in err.message


@pytest.mark.parametrize("domain", ["gmail.com", "outlook.com", "icloud.com", "yahoo.com"])
def test_big_provider_mail_from_is_refused(tmp_path: Path, domain: str) -> None:
    err = refused(tmp_path, overrides={"smtp.mail_from": f"someone@{domain}"})
    assert f"belongs to {domain}" in err.message


def test_big_provider_refused_even_in_mx_only_mode(tmp_path: Path) -> None:
    err = refused(tmp_path, overrides={"probe.mode": "mx-only", "smtp.helo_name": "gmail.com"})
    assert "belongs to gmail.com" in err.message


def test_lookalike_is_not_a_big_provider(tmp_path: Path) -> None:
    cfg = load(tmp_path, overrides={"smtp.helo_name": "probe.notgmail.com"})
    assert cfg.smtp.helo_name == "probe.notgmail.com"


@pytest.mark.parametrize(
    "name", ["probe.example.com", "example.net", "mx.probe.example.org", "PROBE.EXAMPLE.NET."]
)
def test_placeholder_helo_refused_in_smtp_mode(tmp_path: Path, name: str) -> None:
    err = refused(tmp_path, overrides={"smtp.helo_name": name})
    assert "is the example placeholder" in err.message
    assert "set it to a fully-qualified name you control" in err.message


def test_placeholder_mail_from_refused_in_smtp_mode(tmp_path: Path) -> None:
    err = refused(tmp_path, overrides={"smtp.mail_from": "postmaster@example.com"})
    assert "'postmaster@example.com' is the example placeholder" in err.message


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "probe",
        "-bad.example.io",
        "a..b.io",
        "probe .acme.io",
        "10.0.0.1",
        "probe.acme.io\r\nRCPT TO:<x@y.z>",
        "prÖbe.acme.io",
        "under_score.acme.io",
    ],
)
def test_helo_must_be_fqdn(tmp_path: Path, name: str) -> None:
    err = refused(tmp_path, overrides={"smtp.helo_name": name})
    assert "helo_name" in err.message


def test_helo_is_normalised(tmp_path: Path) -> None:
    cfg = load(tmp_path, overrides={"smtp.helo_name": "Probe.Acme-Corp.IO."})
    assert cfg.smtp.helo_name == "probe.acme-corp.io"


@pytest.mark.parametrize(
    "addr",
    [
        "postmaster",
        "a@b@acme.io",
        "post master@acme.io",
        "@acme.io",
        "x@localhost",
        "x@acme.io>\r\nDATA",
        ".x@acme.io",
    ],
)
def test_mail_from_syntax(tmp_path: Path, addr: str) -> None:
    err = refused(tmp_path, overrides={"smtp.mail_from": addr})
    assert "smtp.mail_from" in err.message


def test_mail_from_null_reverse_path_only_when_explicit(tmp_path: Path) -> None:
    cfg = load(tmp_path, overrides={"smtp.mail_from": "<>"})
    assert cfg.smtp.mail_from == ""
    assert cfg.smtp.reverse_path == "<>"
    # An empty string is "not set", never silently the null reverse-path.
    err = refused(tmp_path, overrides={"smtp.mail_from": ""})
    assert "smtp.mail_from is not set" in err.message


def test_mail_from_brackets_are_stripped(tmp_path: Path) -> None:
    cfg = load(tmp_path, overrides={"smtp.mail_from": "<Bounce+probe@Acme-Corp.io>"})
    assert cfg.smtp.mail_from == "Bounce+probe@acme-corp.io"


def test_smtp_reverse_path_default_object() -> None:
    assert SmtpConfig(mail_from="a@b.io").reverse_path == "<a@b.io>"
    with pytest.raises(ValueError, match="mail_from is not set"):
        _ = SmtpConfig().reverse_path


# ─── probe.names_query and cross-field rules ─────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("DELETE FROM outreach.people WHERE id = $1", "must be a single SELECT or WITH"),
        ("SELECT first, last FROM people", "must use the parameter $1"),
        ("SELECT first FROM people WHERE a = $10", "must use the parameter $1"),
        ("SELECT a, b FROM p WHERE id = $1 AND k = $2", "must use no parameter but $1, found $2"),
    ],
)
def test_names_query_refused(tmp_path: Path, query: str, expected: str) -> None:
    err = refused(tmp_path, overrides={"probe.names_query": query})
    assert "probe.names_query" in err.message and expected in err.message


@pytest.mark.parametrize(
    "query",
    [
        "SELECT first_name, last_name FROM people.people WHERE outreach_id = $1",
        "  with p as (select * from x where id = $1::uuid) select a, b from p",
    ],
)
def test_names_query_accepted(tmp_path: Path, query: str) -> None:
    assert load(tmp_path, overrides={"probe.names_query": query}).probe.names_query == query


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"database.min_connections": 5}, "must be <= database.max_connections (4), got 5"),
        ({"smtp.max_connections_per_host": 65}, "must be <= smtp.max_connections (64)"),
        ({"probe.claim_batch": 600}, "must be <= probe.max_in_flight (512), got 600"),
    ],
)
def test_cross_field_rules(tmp_path: Path, overrides: dict[str, object], expected: str) -> None:
    assert expected in refused(tmp_path, overrides=overrides).message


# ─── toolbox path resolution ─────────────────────────────────────────────────────────────────


def test_toolbox_path_relative_to_config_dir(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, GOOD_SMTP + '[toolbox]\npath = "reg/tools.yaml"\n')
    cfg = load_config(path, env={})
    assert cfg.toolbox.path == sub.resolve() / "reg" / "tools.yaml"


def test_toolbox_path_default_is_sibling_of_config(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert cfg.toolbox.path == tmp_path.resolve() / "SNAP_ON_TOOLBOX.yaml"


def test_toolbox_path_absolute_kept(tmp_path: Path) -> None:
    cfg = load(tmp_path, env={"CT_TOOLBOX_PATH": "/srv/tools.yaml"})
    assert cfg.toolbox.path == Path("/srv/tools.yaml")


# ─── redaction, reload ───────────────────────────────────────────────────────────────────────


def test_redacted_masks_password(tmp_path: Path) -> None:
    url = "postgresql://ct:p%40ss%3Aw%2Frd@db.internal:5432/outreach?sslmode=require"
    cfg = load(tmp_path, env={"CT_DATABASE_URL": url, "PGPASSWORD": "env-secret-1"})
    red = cfg.redacted()
    assert red["database"]["url"] == (
        "postgresql://ct:***@db.internal:5432/outreach?sslmode=require"
    )
    assert red["smtp"]["port"] == 25
    assert red["dns"]["nameservers"] == []
    assert isinstance(red["toolbox"]["path"], str)
    flat = repr(red) + repr(cfg) + str(cfg)
    assert "p%40ss" not in flat and "p@ss" not in flat and "w/rd" not in flat
    assert "env-secret-1" not in flat
    assert set(cfg.secrets()) == {"p%40ss%3Aw%2Frd", "p@ss:w/rd", "env-secret-1"}


def test_raw_at_sign_in_password(tmp_path: Path) -> None:
    cfg = load(tmp_path, env={"CT_DATABASE_URL": "postgresql://ct:p@ss@db/ct"})
    assert cfg.redacted()["database"]["url"] == "postgresql://ct:***@db/ct"
    assert cfg.secrets() == ("p@ss",)


def test_invalid_url_error_does_not_leak_password(tmp_path: Path) -> None:
    err = refused(tmp_path, env={"CT_DATABASE_URL": "postgresql://ct:pa:ss/wd@db/ct"})
    assert "is not a valid URL" in err.message
    assert "pa:ss" not in err.message and "ss/wd" not in err.message


def test_reloadable_diff(tmp_path: Path) -> None:
    old = load(tmp_path)
    new = load(
        tmp_path,
        env={
            "CT_SMTP_CONNECT_TIMEOUT": "12",
            "CT_LOG_LEVEL": "debug",
            "CT_DATABASE_URL": "postgresql://ct:newpass1@db2/ct",
            "CT_SMTP_SOURCE_ADDRESS": "192.0.2.7",
            "CT_DNS_NAMESERVERS": "127.0.0.53",
            "CT_DAEMON_OWNER": "prober-2",
        },
    )
    lines = old.reloadable_diff(new)
    assert "smtp.connect_timeout: 10.0 -> 12.0 (reloaded)" in lines
    assert "log.level: 'info' -> 'debug' (reloaded)" in lines
    restart = [line for line in lines if line.endswith("(restart required; running value kept)")]
    assert len(restart) == 4
    assert any(line.startswith("database.url: ") for line in restart)
    assert "newpass1" not in "\n".join(lines)
    assert old.restart_required(new) == [
        "database.url",
        "dns.nameservers",
        "smtp.source_address",
        "daemon.owner",
    ]
    assert old.reloadable_diff(old) == []


def test_reload_policy_covers_the_contract() -> None:
    specs = key_specs()
    for key in (
        "smtp.connect_timeout",
        "smtp.command_timeout",
        "dns.timeout",
        "log.level",
        "log.stats_interval",
        "smtp.max_connections_per_host",
        "writer.flush_interval",
    ):
        assert specs[key].reload, key
    for key in (
        "database.url",
        "smtp.source_address",
        "dns.nameservers",
        "daemon.owner",
        "smtp.helo_name",
        "smtp.mail_from",
        "probe.mode",
    ):
        assert not specs[key].reload, key


def test_verifier_is_off_by_default_and_needs_its_key_when_on() -> None:
    assert load_config(None, env={"CT_PROBE_MODE": "mx-only"}).verifier.enabled is False
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"CT_PROBE_MODE": "mx-only", "CT_VERIFIER_ENABLED": "yes"})
    assert "MILLIONVERIFIER_API_KEY is not set" in info.value.message
    cfg = load_config(
        None,
        env={
            "CT_PROBE_MODE": "mx-only",
            "CT_VERIFIER_ENABLED": "on",
            "MILLIONVERIFIER_API_KEY": "k-123-secret",
        },
    )
    assert cfg.verifier.enabled is True and "k-123-secret" in cfg.secrets()
    with pytest.raises(ConfigError) as bad:
        load_config(
            None,
            env={"CT_PROBE_MODE": "mx-only", "CT_VERIFIER_ENABLED": "maybe"},
        )
    assert "expected true or false" in bad.value.message
    with pytest.raises(ConfigError) as url:
        load_config(
            None,
            env={"CT_PROBE_MODE": "mx-only", "CT_VERIFIER_BASE_URL": "https://x.test/?api=k"},
        )
    assert "must not carry credentials, a query or a fragment" in url.value.message


# ─── database.url = "embedded" (issue 11) ────────────────────────────────────────────────────


def test_embedded_database_with_a_data_directory(tmp_path: Path) -> None:
    text = GOOD_SMTP + '[database]\nurl = "embedded"\ndata_directory = "/var/lib/ct-actors/pg"\n'
    cfg = load(tmp_path, text)
    assert cfg.database.url == "embedded"
    assert cfg.database.data_directory == Path("/var/lib/ct-actors/pg")
    env = {"CT_DATABASE_URL": "embedded", "CT_DATABASE_DATA_DIRECTORY": "/srv/pg"}
    assert load(tmp_path, env=env).database.data_directory == Path("/srv/pg")


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ('url = "embedded"\n', '"embedded" needs database.data_directory'),
        ('url = "embedded"\ndata_directory = "pg"\n', "must be an absolute path"),
        (
            'url = "postgresql://u@db/x"\ndata_directory = "/srv/pg"\n',
            'only used with database.url = "embedded"',
        ),
        ('url = "mysql://u@db/x"\n', 'must be a postgresql:// URL or "embedded"'),
    ],
    ids=["no-directory", "relative", "not-embedded", "other-scheme"],
)
def test_embedded_database_settings_refused(tmp_path: Path, database: str, message: str) -> None:
    err = refused(tmp_path, GOOD_SMTP + "[database]\n" + database)
    assert message in err.message
