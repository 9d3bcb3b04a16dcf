"""Passwords never leak: not from redact_url, not from connection errors, not via tracebacks."""

from __future__ import annotations

import socket
import traceback
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from conftest_db import database_url

from ct_actors.db import ConfigurationError, DatabaseUnavailable, open_database, redact_url
from ct_actors.db.driver import translate_exception
from ct_actors.db.errors import QueryError, SchemaError
from ct_actors.db.redact import UrlRedactor

SECRET = "s3cr3t-P@ss:w/rd?#x"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://ct:hunter22@db.internal:5432/outreach",
            "postgresql://ct:***@db.internal:5432/outreach",
        ),
        ("postgres://ct@db/outreach", "postgres://ct@db/outreach"),
        ("postgresql://db/outreach", "postgresql://db/outreach"),
        ("postgresql://ct:@db/outreach", "postgresql://ct:***@db/outreach"),
        (
            "postgresql://ct:hunter22@db/outreach?sslmode=require&password=hunter22",
            "postgresql://ct:***@db/outreach?sslmode=require&password=***",
        ),
        ("postgresql://ct:p%40ss%3Aw@h1:5432,h2:5433/db", "postgresql://ct:***@h1:5432,h2:5433/db"),
        # Raw (unencoded) '@', ':', '/', '?', '#' in the password are masked whole.
        (f"postgresql://ct:{SECRET}@db/outreach", "postgresql://ct:***@db/outreach"),
        ("host=db user=ct password=hunter22 dbname=x", "host=db user=ct password=*** dbname=x"),
        ("host=db password='with space' dbname=x", "host=db password='***' dbname=x"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    for secret in ("hunter22", SECRET, "p%40ss", "with space"):
        assert secret not in redact_url(url)


def test_redact_url_is_total() -> None:
    for junk in ("://", "@@@", "postgresql://:@/", "a://b:c@", "postgresql://u:p@h/d?%zz=1"):
        assert "p@h" not in redact_url(junk)
    assert redact_url(None) == "None"  # type: ignore[arg-type]


def test_redactor_scrubs_any_spelling_of_the_secret() -> None:
    url = "postgresql://ct:p%40ssw0rd!@db/x"
    r = UrlRedactor(url)
    assert "p%40ssw0rd" not in repr(r) and "p@ssw0rd" not in repr(r)
    text = r.text(f"failed: {url} / p@ssw0rd! / p%40ssw0rd! / p%2540ssw0rd%21 / other://a:b@c")
    assert "ssw0rd" not in text
    assert "other://a:***@c" in text


def test_translate_exception_classifies_and_redacts() -> None:
    import asyncpg

    r = UrlRedactor(f"postgresql://ct:{SECRET}@db/x")
    leak = OSError(f"connect to postgresql://ct:{SECRET}@db/x failed")
    exc = translate_exception(leak, r, "connect")
    assert isinstance(exc, DatabaseUnavailable) and SECRET not in str(exc)
    assert exc.cause == "OSError"
    assert "postgresql://ct:***@db/x" in str(exc)

    def pg(cls: Any, msg: str) -> Exception:
        e = cls(msg)
        return e  # type: ignore[no-any-return]

    cases = [
        (asyncpg.exceptions.DeadlockDetectedError, DatabaseUnavailable),
        (asyncpg.exceptions.AdminShutdownError, DatabaseUnavailable),
        (asyncpg.exceptions.QueryCanceledError, DatabaseUnavailable),
        (asyncpg.exceptions.LockNotAvailableError, DatabaseUnavailable),
        (asyncpg.exceptions.InvalidPasswordError, DatabaseUnavailable),
        (asyncpg.exceptions.UndefinedTableError, SchemaError),
        (asyncpg.exceptions.UniqueViolationError, QueryError),
    ]
    for cls, kind in cases:
        out = translate_exception(pg(cls, f"x {SECRET}"), r, "claim")
        assert type(out) is kind, cls
        assert out.sqlstate == cls.sqlstate and SECRET not in str(out)
    closed = translate_exception(asyncpg.exceptions.InterfaceError("connection is closed"), r, "x")
    assert isinstance(closed, DatabaseUnavailable)
    bug = translate_exception(asyncpg.exceptions.InterfaceError("another operation"), r, "x")
    assert isinstance(bug, QueryError)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_no_leak(exc: BaseException, secret: str) -> None:
    rendered = "".join(traceback.format_exception(exc))
    for text in (str(exc), repr(exc), rendered, *map(str, exc.args)):
        assert secret not in text
    assert exc.__cause__ is None and exc.__suppress_context__


async def test_wrong_port_raises_redacted_database_unavailable(aio_loop: Any) -> None:
    encoded = quote(SECRET, safe="")
    url = f"postgresql://ct:{encoded}@127.0.0.1:{_free_port()}/outreach"
    with pytest.raises(DatabaseUnavailable) as info:
        await open_database(url, connect_timeout=3)
    _assert_no_leak(info.value, SECRET)
    _assert_no_leak(info.value, encoded)
    assert "postgresql://ct:***@127.0.0.1" in str(info.value)


@pytest.mark.db
async def test_missing_database_raises_redacted_database_unavailable(
    aio_loop: Any, pg_available: None
) -> None:
    encoded = quote(SECRET, safe="")
    parts = urlsplit(database_url("ct_no_such_database_here"))
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    url = urlunsplit(parts._replace(netloc=f"{user}:{encoded}@{host}"))
    assert encoded in url
    with pytest.raises(DatabaseUnavailable) as info:
        await open_database(url, connect_timeout=3)
    _assert_no_leak(info.value, SECRET)
    _assert_no_leak(info.value, encoded)
    assert info.value.sqlstate == "3D000"


async def test_unusable_url_is_a_configuration_error(aio_loop: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        await open_database(f"postgresql://ct:{SECRET}@db:notaport/x")
    _assert_no_leak(info.value, SECRET)
