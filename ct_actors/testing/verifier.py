"""A local fake of MillionVerifier's single-address API (v3), on loopback, for tests.

    fake = FakeMillionVerifier(api_key="test-key-123456")
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(fake.serve)        # "http://127.0.0.1:<port>"
        fake.set_result("ann.lee@acme.com", "invalid")    # every answer for this address
        fake.script("bob@acme.com", rate_limited(), Answer("ok", delay=0.2))  # then, in order
        fake.then(server_error(502))                      # the next request, whatever address
        ...
        assert fake.count("bob@acme.com") == 2

Which reply a request gets: a wrong key -> `InvalidKey` (as the real API: HTTP 200 and an
error field); else the address's script, then the global script, then the address's result,
then `default`. An `Answer` spends one credit; with no credits left it becomes
`CreditsExhausted`. Every request is recorded (`requests`), the key only as "right or wrong".
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from ct_actors.verify.client import API_PATH

__all__ = [
    "Answer",
    "CreditsExhausted",
    "Drop",
    "FakeMillionVerifier",
    "FakeRequest",
    "Hang",
    "HttpStatus",
    "InvalidKey",
    "Malformed",
    "Reply",
    "open_fake_api",
    "rate_limited",
    "server_error",
]

_CODES = {"ok": 1, "catch_all": 2, "unknown": 3, "error": 4, "disposable": 5, "invalid": 6}
_QUALITY = {
    "ok": "good",
    "catch_all": "risky",
    "unknown": "risky",
    "invalid": "bad",
    "disposable": "bad",
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True, slots=True)
class Answer:
    """A verification (spends one credit). `credits=None`: the fake's counter after it."""

    result: str = "ok"
    subresult: str = ""
    quality: str | None = None  # derived from result when None
    role: bool = False
    free: bool = False
    didyoumean: str = ""
    livemode: bool = True
    credits: int | None = None
    delay: float = 0.0
    chunked: bool = False  # send the body with Transfer-Encoding: chunked
    extra: Mapping[str, Any] = field(default_factory=dict)
    omit: tuple[str, ...] = ()  # fields to leave out (a partial answer)


@dataclass(frozen=True, slots=True)
class HttpStatus:
    status: int
    body: bytes = b""
    retry_after: str | None = None
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Malformed:
    """HTTP 200 with a body that is not a valid answer (truncated JSON by default)."""

    body: bytes = b'{"email": "x@y.z", "result": "o'
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class CreditsExhausted:
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class InvalidKey:
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Hang:
    """Read the request, never answer; hold the connection until the client gives up."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection without answering."""

    delay: float = 0.0


Reply = Answer | HttpStatus | Malformed | CreditsExhausted | InvalidKey | Hang | Drop


def rate_limited(retry_after: str | None = "1", delay: float = 0.0) -> HttpStatus:
    return HttpStatus(
        429, b'{"error": "Too many requests"}', retry_after=retry_after, delay=delay
    )


def server_error(status: int = 500, delay: float = 0.0) -> HttpStatus:
    return HttpStatus(status, b"<html><body>upstream trouble</body></html>", delay=delay)


@dataclass(frozen=True, slots=True)
class FakeRequest:
    address: str | None
    key_ok: bool
    vendor_timeout: str | None
    path: str
    reply: str  # the reply's class name
    at: float  # trio time


def _error_doc(address: str | None, message: str) -> dict[str, Any]:
    return {
        "email": address or "",
        "quality": "",
        "result": "error",
        "resultcode": 4,
        "subresult": "",
        "free": False,
        "role": False,
        "didyoumean": "",
        "credits": 0,
        "executiontime": 0,
        "error": message,
        "livemode": True,
    }


def _response(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    extra: Mapping[str, str] | None = None,
    chunked: bool = False,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines.append(f"Content-Type: {content_type}")
    lines.extend(f"{k}: {v}" for k, v in (extra or {}).items())
    lines.append("Connection: close")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        parts = [body[:half], body[half:]]
        payload = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


class FakeMillionVerifier:
    def __init__(
        self,
        *,
        api_key: str = "fake-mv-key-0123456789",
        credits: int = 1000,
        default: Reply | None = None,
        read_timeout: float = 10.0,
    ) -> None:
        self.api_key = api_key
        self.credits = credits
        self.default: Reply = default if default is not None else Answer()
        self.read_timeout = read_timeout
        self.requests: list[FakeRequest] = []
        self.base_url: str | None = None
        self._results: dict[str, Reply] = {}
        self._scripts: dict[str, deque[Reply]] = {}
        self._global: deque[Reply] = deque()
        self.in_flight = 0

    # ── scripting ──────────────────────────────────────────────────────────────────────────
    def set_result(self, address: str, result: str | Reply, **answer: Any) -> None:
        """Every later request about `address` (after its script) gets this reply;
        `set_result(a, "invalid", subresult="mailbox_not_found")` builds an Answer."""
        reply = Answer(result, **answer) if isinstance(result, str) else result
        self._results[address.lower()] = reply

    def script(self, address: str, *replies: Reply) -> None:
        """The next requests about `address` get these replies, in order (appended)."""
        self._scripts.setdefault(address.lower(), deque()).extend(replies)

    def then(self, *replies: Reply) -> None:
        """The next requests, whatever their address, get these replies (after any per-address
        script)."""
        self._global.extend(replies)

    def count(self, address: str | None = None) -> int:
        if address is None:
            return len(self.requests)
        return sum(1 for r in self.requests if r.address == address.lower())

    def _pick(self, address: str | None) -> Reply:
        key = (address or "").lower()
        queue = self._scripts.get(key)
        if queue:
            return queue.popleft()
        if self._global:
            return self._global.popleft()
        return self._results.get(key, self.default)

    # ── serving ────────────────────────────────────────────────────────────────────────────
    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; `await nursery.start(fake.serve)` returns the base URL."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        self.base_url = f"http://{host}:{sockname[1]}"
        task_status.started(self.base_url)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.in_flight += 1
        try:
            await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away: nothing to answer
        finally:
            self.in_flight -= 1
            await trio.aclose_forcefully(stream)

    async def _read_head(self, stream: trio.SocketStream) -> bytes | None:
        data = bytearray()
        with trio.move_on_after(self.read_timeout):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk or len(data) > 16384:
                    return None
                data += chunk
            return bytes(data.split(b"\r\n\r\n", 1)[0])
        return None

    async def _converse(self, stream: trio.SocketStream) -> None:
        head = await self._read_head(stream)
        if head is None:
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3:
            await stream.send_all(_response(400, b'{"error": "bad request"}'))
            return
        method, target, _version = parts
        url = urlsplit(target)
        if method != "GET":
            await stream.send_all(_response(405, b'{"error": "method not allowed"}'))
            return
        if url.path != API_PATH:
            await stream.send_all(_response(404, b"not found", content_type="text/plain"))
            return
        params = parse_qs(url.query, keep_blank_values=True)
        raw_address = params.get("email", [None])[0]
        address = raw_address.lower() if raw_address else None
        key_ok = params.get("api", [None])[0] == self.api_key
        reply = self._pick(address)
        if not key_ok:
            reply = InvalidKey()
        elif isinstance(reply, Answer) and self.credits <= 0:
            reply = CreditsExhausted()
        self.requests.append(
            FakeRequest(
                address=address,
                key_ok=key_ok,
                vendor_timeout=params.get("timeout", [None])[0],
                path=url.path,
                reply=type(reply).__name__,
                at=trio.current_time(),
            )
        )
        await self._reply(stream, reply, raw_address)

    async def _reply(self, stream: trio.SocketStream, reply: Reply, address: str | None) -> None:
        if isinstance(reply, Hang):
            # Until the client closes (receive_some returns b"") or the server is cancelled.
            while await stream.receive_some(4096):
                pass
            return
        await trio.sleep(reply.delay)
        if isinstance(reply, Drop):
            return
        if isinstance(reply, HttpStatus):
            extra = {"Retry-After": reply.retry_after} if reply.retry_after is not None else None
            ctype = "application/json" if reply.body.startswith(b"{") else "text/html"
            response = _response(reply.status, reply.body, content_type=ctype, extra=extra)
            await stream.send_all(response)
            return
        if isinstance(reply, Malformed):
            await stream.send_all(_response(200, reply.body))
            return
        if isinstance(reply, InvalidKey):
            doc = _error_doc(address, "Apikey not found")
            await stream.send_all(_response(200, json.dumps(doc).encode()))
            return
        if isinstance(reply, CreditsExhausted):
            doc = _error_doc(address, "Insufficient credits")
            await stream.send_all(_response(200, json.dumps(doc).encode()))
            return
        self.credits -= 1
        quality = reply.quality if reply.quality is not None else _QUALITY.get(reply.result, "")
        answer: dict[str, Any] = {
            "email": address or "",
            "quality": quality,
            "result": reply.result,
            "resultcode": _CODES.get(reply.result, 3),
            "subresult": reply.subresult or reply.result,
            "free": reply.free,
            "role": reply.role,
            "didyoumean": reply.didyoumean,
            "credits": max(0, self.credits) if reply.credits is None else reply.credits,
            "executiontime": 1,
            "error": "",
            "livemode": reply.livemode,
            **reply.extra,
        }
        for name in reply.omit:
            answer.pop(name, None)
        body = json.dumps(answer).encode()
        await stream.send_all(_response(200, body, chunked=reply.chunked))


@asynccontextmanager
async def open_fake_api(**options: Any) -> AsyncIterator[FakeMillionVerifier]:
    """A `FakeMillionVerifier` serving on loopback for the duration of the block
    (`fake.base_url` is set)."""
    fake = FakeMillionVerifier(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
