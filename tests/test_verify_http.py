"""MillionVerifierClient's HTTP seam, through `httpx.MockTransport`: what the request looks
like, how every transport failure is typed (and whether the vendor may have billed it), that
redirects are never followed, and that neither the key nor the URL's query reaches an error
message or a log record — httpx's own exceptions and its request log line carry the full URL.
Timings run on the MockClock (the mock transport sleeps in virtual time)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from ct_actors.testing.verifier import open_fake_api
from ct_actors.verify.answer import VendorVerdict
from ct_actors.verify.client import MillionVerifierClient, without_query
from ct_actors.verify.errors import (
    RejectedKind,
    UnavailableKind,
    VerifierError,
    VerifierRejected,
    VerifierUnavailable,
)

pytestmark = pytest.mark.timeout(30)

KEY = "mv-SECRET/key+4f9a=2b7c81"  # '/', '+' and '=' are %-encoded in the query
BASE = "https://api.millionverifier.example"
ADDR = "ann.lee@acme.com"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def answer(request: httpx.Request, result: str = "ok", **fields: Any) -> httpx.Response:
    doc = {
        "email": request.url.params["email"],
        "result": result,
        "credits": 99,
        "livemode": True,
        **fields,
    }
    return httpx.Response(200, json=doc)


def client(handler: Handler, **options: Any) -> MillionVerifierClient:
    return MillionVerifierClient(BASE, KEY, transport=httpx.MockTransport(handler), **options)


def leaks(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), repr(exc.args), *traceback.format_exception(exc)])


def assert_clean(text: str) -> None:
    assert KEY not in text
    assert httpx.QueryParams({"api": KEY})["api"] not in text
    assert "api=" not in text  # no query at all, masked or not
    assert "mv-SECRET" not in text


async def test_the_request_we_send() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        response = answer(request, "invalid")
        response.headers["Set-Cookie"] = "session=abc; Path=/"
        return response

    async with client(handler, vendor_timeout=7) as c:
        first = await c.verify("X+Tag@ACME.com")
        await c.verify(ADDR)
    assert first.verdict is VendorVerdict.INVALID and first.address == "X+Tag@acme.com"
    request = seen[0]
    assert request.method == "GET"
    assert request.url.scheme == "https" and request.url.host == "api.millionverifier.example"
    assert request.url.path == "/api/v3/"
    assert dict(request.url.params) == {"api": KEY, "email": "X+Tag@acme.com", "timeout": "7"}
    assert b"%2B" in request.url.query  # a '+' in the address is not a space
    assert request.headers["accept"] == "application/json"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["user-agent"].startswith("ct-actors/")
    assert "cookie" not in seen[1].headers  # cookies are refused, never sent back


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_never_followed_nor_quoted(status: int) -> None:
    seen: list[httpx.URL] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        # A redirect that keeps the query (as a hostile proxy would) to another host.
        target = f"https://elsewhere.example/steal?{request.url.query.decode()}"
        return httpx.Response(status, headers={"Location": target}, text=f"moved to {target}")

    with pytest.raises(VerifierRejected) as caught:
        await client(handler).verify(ADDR)
    assert caught.value.kind is RejectedKind.HTTP_STATUS and caught.value.status == status
    assert [u.host for u in seen] == ["api.millionverifier.example"]  # asked once, ours
    assert_clean(leaks(caught.value))
    assert "elsewhere.example/steal?<query>" in str(caught.value)


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        # httpx's exceptions may quote the URL; this one does, key and all.
        raise exc_type(f"trouble with {request.url}", request=request)

    return handler


@pytest.mark.parametrize(
    ("exc_type", "kind", "billed"),
    [
        (httpx.ConnectError, UnavailableKind.CONNECTION, False),  # refused, TLS handshake
        (httpx.ConnectTimeout, UnavailableKind.TIMEOUT, False),
        (httpx.PoolTimeout, UnavailableKind.TIMEOUT, False),
        (httpx.WriteError, UnavailableKind.CONNECTION, True),
        (httpx.ReadError, UnavailableKind.CONNECTION, True),
        (httpx.ReadTimeout, UnavailableKind.TIMEOUT, True),
        (httpx.WriteTimeout, UnavailableKind.TIMEOUT, True),
        (httpx.RemoteProtocolError, UnavailableKind.MALFORMED, True),  # closed, bad framing
        (httpx.ProxyError, UnavailableKind.CONNECTION, True),
    ],
)
async def test_transport_failures_are_typed_and_clean(
    exc_type: type[httpx.TransportError], kind: UnavailableKind, billed: bool
) -> None:
    with pytest.raises(VerifierUnavailable) as caught:
        await client(raising(exc_type)).verify(ADDR)
    assert caught.value.kind is kind
    assert caught.value.may_have_billed is billed
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert str(caught.value).startswith(f"{BASE}/api/v3/: ")
    assert_clean(leaks(caught.value))


async def test_our_deadline_bounds_the_whole_exchange(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A vendor that takes longer than `timeout`: given up at exactly `timeout`, and since the
    request had been handed over, the vendor may have billed it."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(60)
        return answer(request)

    c = client(handler, timeout=12.5)
    started = trio.current_time()
    with pytest.raises(VerifierUnavailable) as caught:
        await c.verify(ADDR)
    assert trio.current_time() - started == 12.5
    assert caught.value.kind is UnavailableKind.TIMEOUT and caught.value.may_have_billed
    assert str(caught.value).endswith("no answer within 12.5s")


async def _streamed() -> AsyncIterator[bytes]:
    for part in (b"x" * 40_000, b"y" * 40_000):  # no Content-Length: chunked, too large
        yield part


@pytest.mark.parametrize(
    "response",
    [
        lambda: httpx.Response(200, content=b"x" * 70_000),  # declared too large
        lambda: httpx.Response(200, content=_streamed()),
        lambda: httpx.Response(200, content=b"<html>maintenance</html>"),
        lambda: httpx.Response(200, json={"email": ADDR, "result": "ok"}),  # partial
    ],
)
async def test_oversized_and_partial_bodies_are_malformed(
    response: Callable[[], httpx.Response],
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return response()

    with pytest.raises(VerifierUnavailable) as caught:
        await client(handler).verify(ADDR)
    assert caught.value.kind is UnavailableKind.MALFORMED and caught.value.may_have_billed


@pytest.mark.parametrize(
    ("status", "error", "kind", "billed"),
    [
        (429, VerifierUnavailable, UnavailableKind.RATE_LIMITED, False),
        (408, VerifierUnavailable, UnavailableKind.TIMEOUT, False),
        (500, VerifierUnavailable, UnavailableKind.SERVER_ERROR, True),
        (503, VerifierUnavailable, UnavailableKind.SERVER_ERROR, False),
        (401, VerifierRejected, RejectedKind.INVALID_KEY, None),
        (403, VerifierRejected, RejectedKind.INVALID_KEY, None),
        (402, VerifierRejected, RejectedKind.CREDITS_EXHAUSTED, None),
        (404, VerifierRejected, RejectedKind.HTTP_STATUS, None),
    ],
)
async def test_statuses_echoing_the_url(
    status: int, error: type[VerifierError], kind: Any, billed: bool | None
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, headers={"Retry-After": "3"}, text=f"<pre>GET {request.url}</pre>"
        )

    with pytest.raises(error) as caught:
        await client(handler).verify(ADDR)
    assert caught.value.kind is kind  # type: ignore[attr-defined]
    if isinstance(caught.value, VerifierUnavailable):
        assert caught.value.may_have_billed is billed
        assert caught.value.retry_after == (3.0 if status in (429, 500, 503) else None)
    assert_clean(leaks(caught.value))


async def test_no_log_record_carries_the_key(caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs each request with its URL at INFO, httpcore its phases at DEBUG: with every
    library logger at DEBUG, over a real loopback socket, nothing carries the key or query."""
    caplog.set_level(logging.DEBUG)
    async with open_fake_api(api_key=KEY) as fake:
        assert fake.base_url is not None
        async with MillionVerifierClient(fake.base_url, KEY, timeout=5) as real:
            with trio.fail_after(10):
                assert (await real.verify(ADDR)).verdict is VendorVerdict.VALID
    records = [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name == "httpx" for r in records), "httpx logged no request line"
    assert any(r.name.startswith("httpcore") for r in records)
    for record in records:
        assert_clean(record.getMessage())
    assert fake.requests[0].key_ok


async def test_aclose_closes_the_pool() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return answer(request)

    c = client(handler)
    assert (await c.verify(ADDR)).credits == 99
    await c.aclose()
    with pytest.raises(RuntimeError):  # httpx refuses a closed client: no silent reopen
        await c.verify(ADDR)


def test_without_query() -> None:
    text = "GET https://h/api/v3/?api=k&email=a%40b 'http://x/?q=1' end?"
    assert without_query(text) == "GET https://h/api/v3/?<query> 'http://x/?<query>' end?"
    assert without_query("no query here, is there?") == "no query here, is there?"


async def test_a_vendor_echoing_our_query_is_cut() -> None:
    """An error answer (HTTP 200) that quotes our request: neither the key nor the rest of the
    query (the address, the vendor timeout) goes into the message."""

    async def handler(request: httpx.Request) -> httpx.Response:
        echo = f"busy, retry GET {request.url.path}?{request.url.query.decode()} later?"
        return answer(request, "error", error=echo)

    with pytest.raises(VerifierUnavailable) as caught:
        await client(handler).verify(ADDR)
    assert caught.value.kind is UnavailableKind.VENDOR_ERROR
    assert_clean(leaks(caught.value))
    assert "retry GET /api/v3/?<query> later?" in str(caught.value)
