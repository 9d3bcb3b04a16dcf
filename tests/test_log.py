"""Logging set-up (JSON shape, level filtering, reconfiguration) and redaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog

from ct_actors import log as log_module
from ct_actors.log import (
    as_log,
    configure_logging,
    fields_as_log,
    get_logger,
    set_level,
    set_secrets,
)
from ct_actors.redact import Redactor, redact_text, redact_url


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    log_module._SINK.stream = None
    log_module.set_secrets(())


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


# ─── JSON output ─────────────────────────────────────────────────────────────────────────────


def test_json_shape() -> None:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    get_logger("ct.test").info("probe_done", domain="acme.io", n=3, ok=True, ratio=0.5)
    (rec,) = lines(buf)
    assert rec["event"] == "probe_done"
    assert rec["level"] == "info"
    assert rec["logger"] == "ct.test"
    assert (rec["domain"], rec["n"], rec["ok"], rec["ratio"]) == ("acme.io", 3, True, 0.5)
    assert rec["ts"].endswith("Z")
    ts = dt.datetime.fromisoformat(rec["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - ts).total_seconds()) < 60
    # One compact line per event.
    assert buf.getvalue().count("\n") == 1
    assert ", " not in buf.getvalue()


def test_json_serialises_odd_values() -> None:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    get_logger("t").info(
        "x", cost=Decimal("0.004"), path=Path("/etc/ct"), items=("a", 1), name="zoë"
    )
    (rec,) = lines(buf)
    assert rec["cost"] == "0.004"
    assert rec["path"] == "/etc/ct"
    assert rec["items"] == ["a", 1]
    assert rec["name"] == "zoë"


def test_plain_structlog_loggers_carry_their_name_too() -> None:
    # Modules may use structlog.get_logger(name) at import time, before configuration.
    early = structlog.get_logger("ct_actors.early")
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    early.info("hello")
    structlog.get_logger().info("anonymous")
    recs = lines(buf)
    assert recs[0]["logger"] == "ct_actors.early"
    assert "logger" not in recs[1]


def test_default_stream_is_stdout_at_write_time(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    get_logger("t").info("to_stdout")
    assert json.loads(capsys.readouterr().out)["event"] == "to_stdout"


def test_positional_interpolation() -> None:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    get_logger("t").info("claimed %d records", 7)
    assert lines(buf)[0]["event"] == "claimed 7 records"


# ─── levels ──────────────────────────────────────────────────────────────────────────────────


def test_level_filtering_and_live_change() -> None:
    buf = io.StringIO()
    configure_logging("json", "warning", stream=buf)
    logger = get_logger("t")
    logger.info("dropped")
    logger.debug("dropped")
    logger.warning("kept-1")
    logger.error("kept-2")
    assert [r["event"] for r in lines(buf)] == ["kept-1", "kept-2"]

    # The logger is cached by now; the level change must still reach it (SIGHUP).
    set_level("debug")
    logger.debug("kept-3")
    bound = logger.bind(record="r1")
    bound.debug("kept-4")
    set_level("error")
    bound.warning("dropped")
    logger.error("kept-5")
    assert [r["event"] for r in lines(buf)] == ["kept-1", "kept-2", "kept-3", "kept-4", "kept-5"]
    assert lines(buf)[3]["record"] == "r1"


def test_reconfigure_reaches_cached_loggers() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", stream=first)
    logger = get_logger("t")
    logger.info("one")
    configure_logging("json", "debug", stream=second, secrets=["s3cret-value"])
    logger.debug("two", v="s3cret-value")
    assert [r["event"] for r in lines(first)] == ["one"]
    (rec,) = lines(second)
    assert rec["event"] == "two" and rec["v"] == "***"


def test_bad_level_and_format() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("json", "verbose", stream=io.StringIO())
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("xml", "info", stream=io.StringIO())  # type: ignore[arg-type]


# ─── redaction in log output ─────────────────────────────────────────────────────────────────


def test_secrets_are_masked_everywhere() -> None:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf, secrets=["Tr0ub4dor&3"])
    get_logger("t").info(
        "connect failed Tr0ub4dor&3",
        dsn="postgresql://ct:Tr0ub4dor%263@db/ct",
        nested={"a": ["x Tr0ub4dor&3 y", {"b": "password=hunter22 host=db"}]},
        other="postgres://u:zz-pass@h:5432/d",
        err=OSError("api_key=abcd1234 rejected"),
    )
    out = buf.getvalue()
    for leaked in ("Tr0ub4dor", "hunter22", "zz-pass", "abcd1234"):
        assert leaked not in out, leaked
    (rec,) = lines(buf)
    assert rec["event"] == "connect failed ***"
    assert rec["dsn"] == "postgresql://ct:***@db/ct"
    assert rec["nested"] == {"a": ["x *** y", {"b": "password=*** host=db"}]}
    assert rec["err"] == "OSError: api_key=*** rejected"


def test_exceptions_with_exc_info_are_redacted() -> None:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf, secrets=["sup3r-secret"])
    logger = get_logger("t")
    try:
        raise ConnectionError("cannot connect to postgresql://ct:sup3r-secret@db:5432/ct")
    except ConnectionError:
        logger.exception("db_down")
    try:
        raise RuntimeError("bad password='other pass' in conninfo")
    except RuntimeError as exc:
        logger.error("boom", exc_info=exc)
    out = buf.getvalue()
    assert "sup3r-secret" not in out
    assert "other pass" not in out
    recs = lines(buf)
    assert "Traceback" in recs[0]["exception"]
    assert (
        "ConnectionError: cannot connect to postgresql://ct:***@db:5432/ct" in recs[0]["exception"]
    )
    assert "password='***'" in recs[1]["exception"]


def test_console_format_redacts_too() -> None:
    buf = io.StringIO()
    configure_logging("console", "info", stream=buf, secrets=["consolepw"])
    logger = get_logger("t")
    try:
        raise ValueError("consolepw leaked?")
    except ValueError:
        logger.exception("oops", url="postgresql://u:consolepw@h/d")
    out = buf.getvalue()
    assert "oops" in out
    assert "consolepw" not in out
    assert "ValueError: *** leaked?" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[0])


def test_set_secrets_live() -> None:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    logger = get_logger("t")
    set_secrets(["rotated-pw-2"])
    logger.info("x", v="rotated-pw-2")
    assert lines(buf)[0]["v"] == "***"


# ─── redact_url / redact_text ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://ct:pw@db:5432/ct", "postgresql://ct:***@db:5432/ct"),
        # raw @, : and / inside an unencoded password: masked whole, up to the last @
        ("postgresql://ct:p@ss:w/rd@db:5432/ct", "postgresql://ct:***@db:5432/ct"),
        (
            "postgres://ct:p%40ss%2Fx@db/ct?sslmode=require",
            "postgres://ct:***@db/ct?sslmode=require",
        ),
        ("postgresql://:onlypw@db/ct", "postgresql://:***@db/ct"),
        ("postgresql://ct@db/ct", "postgresql://ct@db/ct"),  # no password: unchanged
        ("postgresql://db:5432/ct", "postgresql://db:5432/ct"),  # host:port is not userinfo
        (
            "postgresql:///ct?host=/run/pg&password=qq%26x",
            "postgresql:///ct?host=/run/pg&password=***",
        ),
        ("host=db user=ct password=s3cr3t dbname=ct", "host=db user=ct password=*** dbname=ct"),
        ("host=db password='a b\\' c' dbname=ct", "host=db password='***' dbname=ct"),
        ("host=db password = spaced dbname=ct", "host=db password = *** dbname=ct"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("error: could not connect 'postgresql://u:x@y:z@host/db' (timeout)", "x@y:z"),
        ("asyncpg: <postgres://u:p/w@h/d> refused", "p/w"),
        ("env PGPASSWORD=pg-env-pw sslpassword=keypass", "pg-env-pw"),
        ("env PGPASSWORD=pg-env-pw sslpassword=keypass", "keypass"),
        ("GET /v3/verify?api=x&apikey=MV-KEY-123&email=a@b.io", "MV-KEY-123"),
        ("x_api_key=K1K1K1 API-KEY=K2K2K2", "K1K1K1"),
        ("x_api_key=K1K1K1 API-KEY=K2K2K2", "K2K2K2"),
        ('{"password": "jsonpw", "user": "u"}', "jsonpw"),
        ("{'api_key': 'reprkey'}", "reprkey"),
        ('Password="quoted pw"', "quoted pw"),
    ],
)
def test_redact_text_patterns(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert "***" in out


def test_redact_text_known_secrets_raw_and_encoded() -> None:
    secret = "p@ss/w:rd%"
    text = f"raw {secret} encoded p%40ss%2Fw%3Ard%25 end"
    assert redact_text(text, [secret]) == "raw *** encoded *** end"
    # A secret that is itself %-encoded is masked in decoded form too.
    assert redact_text("see p@ss!", ["p%40ss!"]) == "see ***"


def test_redact_text_leaves_ordinary_text_alone() -> None:
    for text in (
        "probe_done domain=acme.io code=CT-M-NO-MX",
        "RCPT TO:<john.smith@acme.io> 250 2.1.5 OK",
        "https://acme.io:8443/path",
        "tokens=5 passed=3",
        "",
    ):
        assert redact_text(text) == text


def test_short_secrets_are_not_masked_by_value() -> None:
    # Masking every "pg" in every line would destroy the log; structural patterns still apply.
    assert redact_text("pg is up", ["pg"]) == "pg is up"
    assert redact_text("postgresql://u:pg@h/d", ["pg"]) == "postgresql://u:***@h/d"


def test_longest_secret_wins() -> None:
    assert Redactor(["abcd", "abcdefgh"])("xx abcdefgh yy") == "xx *** yy"


def test_library_logging_goes_through_the_json_log(capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 10: during a database outage asyncpg (and asyncio's default exception handler)
    # printed plain-text tracebacks on stderr, unredacted; now they are JSON lines like ours.
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf, secrets=["hunter2-pw"])
    configure_logging("json", "info", stream=buf, secrets=["hunter2-pw"])  # idempotent
    try:
        raise ConnectionResetError("postgresql://ct:hunter2-pw@db/x reset by peer")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").warning(
            "connection %s lost", "db:5432", exc_info=True
        )
    logging.getLogger("asyncpg.protocol").info("chatter")  # below WARNING: dropped
    (line,) = lines(buf)
    assert line["event"] == "library_log" and line["logger"] == "asyncpg.pool"
    assert line["level"] == "warning" and line["message"] == "connection db:5432 lost"
    assert "ConnectionResetError" in line["exception"] and "hunter2-pw" not in line["exception"]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    root = logging.getLogger()
    bridges = [h for h in root.handlers if isinstance(h, log_module._StdlibBridge)]
    assert len(bridges) == 1
    root.removeHandler(bridges[0])  # leave the process's logging as other tests expect it
    root.setLevel(logging.WARNING)


# ─── statistics at the logging edge ──────────────────────────────────────────────────────────


class Colour(enum.StrEnum):
    RED = "red"


@dataclasses.dataclass(frozen=True, slots=True)
class Inner:
    until: dt.datetime | None
    spent: Decimal
    colour: Colour


@dataclasses.dataclass(frozen=True, slots=True)
class Outer:
    count: int
    inner: Inner
    by_colour: dict[Colour, int]
    items: tuple[Inner, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Flattened:
    inner: Inner
    count: int

    def as_log(self) -> dict[str, Any]:
        line = fields_as_log(self)
        return {**line.pop("inner"), **line}


def test_as_log_renders_a_statistics_value_once() -> None:
    until = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    inner = Inner(until, Decimal("0.0040"), Colour.RED)
    rendered = {"until": "2026-12-01T00:00:00+00:00", "spent": "0.0040", "colour": "red"}
    value = Outer(3, inner, {Colour.RED: 2}, (inner,))
    assert as_log(value) == {
        "count": 3,
        "inner": rendered,
        "by_colour": {"red": 2},
        "items": [rendered],
    }
    assert list(as_log(value)) == ["count", "inner", "by_colour", "items"]  # declaration order
    # A value that shapes its own line is asked to, also when nested.
    assert as_log({"x": Flattened(inner, 1)}) == {"x": {**rendered, "count": 1}}
    assert as_log(Inner(None, Decimal(0), Colour.RED))["until"] is None

