"""MillionVerifier's single-address API (v3), spoken over plain trio streams.

    GET {base_url}/api/v3/?api={key}&email={address}&timeout={seconds}

answers (HTTP 200, JSON):

    {"email": "ann.lee@acme.com", "quality": "good", "result": "ok", "resultcode": 1,
     "subresult": "ok", "free": false, "role": false, "didyoumean": "", "credits": 12345,
     "executiontime": 1, "error": "", "livemode": true}

`result` is one of ok / catch_all / unknown / invalid / disposable (resultcode 1, 2, 3, 6, 5);
an error answer has `result` "error" (resultcode 4) and a non-empty `error`, and it too comes
with HTTP 200 ("Apikey not found", "Insufficient credits", ...). The vendor's own `timeout`
parameter (2..60 s) bounds how long it spends on the remote mail server; our `timeout` bounds the
whole HTTP exchange and must be larger.

Why no HTTP library: one GET per weak PASS, no redirects (the key is in the query string: a
redirect must never carry it elsewhere), no cookies, no keep-alive. ~150 lines over
`trio.open_tcp_stream` / `trio.SSLStream` cover it; httpx would add four packages for that.

Errors are typed, and what the caller must do follows from the type:

* `VerifierUnavailable`: transient (timeout, connection trouble, 429, 5xx, a malformed or
  partial answer, an unexpected error message). Never a verdict. `may_have_billed` says whether
  the vendor may have processed (and billed) the request; `retry_after` carries a 429/503's
  `Retry-After`.
* `VerifierRejected`: not transient (the key is refused, the credits are spent, a test-mode key
  in production, an HTTP status that means our request is wrong). `exhausted` tells the
  credits case apart: the caller trips `budget_cap_reached` for it.

Secrets: the key travels in the URL, so no exception text or log line ever contains the URL's
query; everything the vendor (or a proxy's error page) sends back is passed through a
`Redactor` that knows the key before it goes into a message.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import json
import math
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import trio

from ct_actors.net.connector import Connector, TrioConnector
from ct_actors.redact import Redactor

__all__ = [
    "API_PATH",
    "DEFAULT_BASE_URL",
    "MillionVerifierClient",
    "RejectedKind",
    "UnavailableKind",
    "Verdict",
    "VerifierAnswer",
    "VerifierError",
    "VerifierRejected",
    "VerifierUnavailable",
    "parse_answer",
]

DEFAULT_BASE_URL: Final = "https://api.millionverifier.com"
API_PATH: Final = "/api/v3/"
# A verification answer is ~300 bytes; anything near this is not an answer.
MAX_RESPONSE_BYTES: Final = 64 * 1024
_SNIPPET = 200  # characters of a refused body quoted in an error message
USER_AGENT: Final = "ct-actors/0.1 (+EmailVerifier TOOL-019)"


class Verdict(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"
    CATCH_ALL = "catch_all"
    DISPOSABLE = "disposable"


# The vendor's `result` -> our verdict. "error" is not a verdict (see parse_answer).
RESULT_VERDICTS: Final[dict[str, Verdict]] = {
    "ok": Verdict.VALID,
    "catch_all": Verdict.CATCH_ALL,
    "unknown": Verdict.UNKNOWN,
    "invalid": Verdict.INVALID,
    "disposable": Verdict.DISPOSABLE,
}
# Documented result codes (kept for the evidence; the verdict comes from `result`).
RESULT_CODES: Final[dict[int, str]] = {
    1: "ok",
    2: "catch_all",
    3: "unknown",
    4: "error",
    5: "disposable",
    6: "invalid",
}


class UnavailableKind(enum.StrEnum):
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    MALFORMED = "malformed"
    VENDOR_ERROR = "vendor_error"


class RejectedKind(enum.StrEnum):
    INVALID_KEY = "invalid_key"
    CREDITS_EXHAUSTED = "credits_exhausted"
    NOT_LIVE = "not_live"  # livemode false: a sandbox key, its verdicts are not real
    HTTP_STATUS = "http_status"  # 3xx/4xx other than 401/402/403/408/429: our request is wrong


class VerifierError(Exception):
    """Base class; messages never contain the API key or the request URL's query."""


class VerifierUnavailable(VerifierError):
    """Transient: no verdict this time. Never turn it into a FAIL."""

    def __init__(
        self,
        message: str,
        *,
        kind: UnavailableKind,
        may_have_billed: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.may_have_billed = may_have_billed
        self.retry_after = retry_after
        self.status = status


class VerifierRejected(VerifierError):
    """Not transient: calling again will not help until an operator acts."""

    def __init__(self, message: str, *, kind: RejectedKind, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def exhausted(self) -> bool:
        """The vendor's credits are spent: the caller trips budget_cap_reached."""
        return self.kind is RejectedKind.CREDITS_EXHAUSTED


@dataclass(frozen=True, slots=True)
class VerifierAnswer:
    """A verdict from the vendor."""

    address: str
    verdict: Verdict
    result: str  # the vendor's raw `result`
    credits: int  # credits left after this verification
    quality: str | None = None
    resultcode: int | None = None
    subresult: str | None = None
    role: bool | None = None
    free: bool | None = None
    didyoumean: str | None = None
    execution_time: float | None = None
    livemode: bool | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def evidence(self) -> dict[str, Any]:
        """JSON-friendly fields for the outcome's audit trail."""
        out: dict[str, Any] = {
            "vendor_result": self.result,
            "quality": self.quality,
            "subresult": self.subresult,
            "resultcode": self.resultcode,
            "role": self.role,
            "free": self.free,
            "credits_left": self.credits,
        }
        if self.didyoumean:
            out["didyoumean"] = self.didyoumean
        return {k: v for k, v in out.items() if v is not None}


# ─── parsing (pure) ──────────────────────────────────────────────────────────────────────────


def _malformed(why: str) -> VerifierUnavailable:
    # A 200 with a garbled body: the vendor may well have done (and billed) the verification.
    return VerifierUnavailable(
        f"malformed answer: {why}", kind=UnavailableKind.MALFORMED, may_have_billed=True
    )


def _optional(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    if value is None:
        return None
    # bool is an int subclass: `"credits": true` is not a number.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _malformed(f"{key} is {value!r}")
    if not isinstance(value, kind):
        raise _malformed(f"{key} has type {type(value).__name__}")
    return value


def _error_answer(message: str, redact: Redactor) -> VerifierError:
    text = redact(message.strip())[:_SNIPPET]
    low = text.lower()
    if "credit" in low:
        return VerifierRejected(
            f"vendor error: {text}", kind=RejectedKind.CREDITS_EXHAUSTED
        )
    if "apikey" in low or "api key" in low or "api_key" in low or "unauthori" in low:
        return VerifierRejected(f"vendor error: {text}", kind=RejectedKind.INVALID_KEY)
    # Anything else ("server busy", a message we have never seen): no verdict, and not worth
    # stopping the verifier for. An error answer is not a verification, so not billed.
    return VerifierUnavailable(
        f"vendor error: {text}", kind=UnavailableKind.VENDOR_ERROR, may_have_billed=False
    )


def parse_answer(
    body: bytes | str,
    address: str,
    *,
    require_livemode: bool = True,
    redactor: Redactor | None = None,
) -> VerifierAnswer:
    """The vendor's JSON -> `VerifierAnswer`, or the typed error it stands for.

    Strict on what we use (a JSON object; `result` one of the five kinds; `email` the address
    we asked about; `credits` a whole number >= 0; documented optional fields of the right
    type), tolerant of fields we do not know. Anything else is `VerifierUnavailable` (kind
    MALFORMED): a half answer is never a verdict.
    """
    redact = redactor or Redactor()
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _malformed(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise _malformed(f"a JSON {type(doc).__name__}, not an object")
    error = _optional(doc, "error", str) or ""
    if error.strip():
        raise _error_answer(error, redact)
    result = doc.get("result")
    if not isinstance(result, str):
        raise _malformed("no result")
    verdict = RESULT_VERDICTS.get(result)
    if verdict is None:
        if result == "error":
            raise VerifierUnavailable(
                "vendor answered result=error without a message",
                kind=UnavailableKind.VENDOR_ERROR,
                may_have_billed=False,
            )
        raise _malformed(f"unknown result {redact(result)[:40]!r}")
    echoed = doc.get("email")
    if not isinstance(echoed, str):
        raise _malformed("no email")
    if echoed.strip().lower() != address.strip().lower():
        # A cache or proxy mixing answers up must not hand one address another's verdict.
        raise _malformed("the answer is about another address")
    credits = doc.get("credits")
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
        raise _malformed(f"credits is {credits!r}")
    execution = _optional(doc, "executiontime", (int, float))
    if execution is not None and not math.isfinite(execution):
        raise _malformed("executiontime is not finite")
    livemode = _optional(doc, "livemode", bool)
    if require_livemode and livemode is False:
        raise VerifierRejected(
            "the API key is in test mode (livemode false): its verdicts are not real",
            kind=RejectedKind.NOT_LIVE,
        )
    return VerifierAnswer(
        address=address,
        verdict=verdict,
        result=result,
        credits=credits,
        quality=_optional(doc, "quality", str),
        resultcode=_optional(doc, "resultcode", int),
        subresult=_optional(doc, "subresult", str),
        role=_optional(doc, "role", bool),
        free=_optional(doc, "free", bool),
        didyoumean=_optional(doc, "didyoumean", str),
        execution_time=None if execution is None else float(execution),
        livemode=livemode,
        raw=dict(doc),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` (delta-seconds or an HTTP date) -> seconds from now, or None."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    wall = time.time() if now is None else now
    return max(0.0, when.timestamp() - wall)


# ─── HTTP/1.1 over trio streams ──────────────────────────────────────────────────────────────


class _ProtocolError(Exception):
    """The peer did not speak HTTP/1.1 as we need it (internal; becomes VerifierUnavailable)."""


class _Reader:
    """Buffered reads from a stream, bounded by a total byte limit."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._data = bytearray()
        self._total = 0

    async def _fill(self) -> bool:
        chunk = await self._stream.receive_some(16384)
        if not chunk:
            return False
        self._total += len(chunk)
        if self._total > self._limit:
            raise _ProtocolError(f"response larger than {self._limit} bytes")
        self._data += chunk
        return True

    async def until(self, delimiter: bytes) -> bytes:
        while (index := self._data.find(delimiter)) < 0:
            if not await self._fill():
                raise _ProtocolError("connection closed in the middle of the response")
        out = bytes(self._data[:index])
        del self._data[: index + len(delimiter)]
        return out

    async def exactly(self, count: int) -> bytes:
        while len(self._data) < count:
            if not await self._fill():
                raise _ProtocolError("connection closed before the end of the body")
        out = bytes(self._data[:count])
        del self._data[:count]
        return out

    async def to_eof(self) -> bytes:
        while await self._fill():
            pass
        out = bytes(self._data)
        self._data.clear()
        return out


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _ProtocolError("undecodable response head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _ProtocolError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line or line[0] in " \t":
            raise _ProtocolError("malformed header line")
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise _ProtocolError("malformed header line")
        key = name.strip().lower()
        value = value.strip()
        if key == "content-length" and key in headers and headers[key] != value:
            raise _ProtocolError("conflicting Content-Length headers")
        headers[key] = value
    return status, headers


async def _read_chunked(reader: _Reader) -> bytes:
    body = bytearray()
    while True:
        line = await reader.until(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _ProtocolError("malformed chunk size") from None
        if size < 0:
            raise _ProtocolError("malformed chunk size")
        if size == 0:
            while await reader.until(b"\r\n"):  # trailers, up to the empty line
                pass
            return bytes(body)
        body += await reader.exactly(size)
        if await reader.until(b"\r\n"):
            raise _ProtocolError("chunk not followed by CRLF")


async def _read_response(
    stream: trio.abc.ReceiveStream, limit: int
) -> tuple[int, dict[str, str], bytes]:
    reader = _Reader(stream, limit)
    while True:
        status, headers = _parse_head(await reader.until(b"\r\n\r\n"))
        if not 100 <= status < 200:
            break  # skip interim answers (100 Continue)
    encoding = headers.get("transfer-encoding")
    length = headers.get("content-length")
    if encoding is not None:
        if encoding.lower() != "chunked":
            raise _ProtocolError(f"unsupported Transfer-Encoding {encoding[:30]!r}")
        body = await _read_chunked(reader)
    elif length is not None:
        if not length.isdigit():
            raise _ProtocolError("malformed Content-Length")
        size = int(length)
        if size > limit:
            raise _ProtocolError(f"response larger than {limit} bytes")
        body = await reader.exactly(size)
    else:
        body = await reader.to_eof()
    return status, headers, body


@dataclass(frozen=True, slots=True)
class _Endpoint:
    scheme: str
    host: str
    port: int
    prefix: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.prefix}{API_PATH}"


def _endpoint(base_url: str) -> _Endpoint:
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"verifier base URL must be http:// or https://, got {parts.scheme!r}")
    if parts.username or parts.password:
        raise ValueError("verifier base URL must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError("verifier base URL must not have a query or fragment")
    if not parts.hostname:
        raise ValueError("verifier base URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("verifier base URL has an invalid port") from None
    return _Endpoint(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def _check_address(address: str) -> str:
    local, at, domain = address.strip().rpartition("@")
    if (
        not at
        or not local
        or not domain
        or len(address) > 254
        or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address)
    ):
        raise ValueError(f"not an email address: {address!r}")
    return f"{local}@{domain.lower()}"


class MillionVerifierClient:
    """One GET per `verify()`, on a fresh connection (`Connection: close`).

    `timeout` bounds the whole exchange (connect, TLS, request, answer); `vendor_timeout` is
    the API's own `timeout` parameter (2..60 s) and should be a few seconds shorter. https uses
    a verifying TLS context (the key is in the URL: certificates are always checked); http is
    for the local fake. `connector` is the network seam (default: plain `TrioConnector`, not the
    SMTP prober's source address).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 20.0,
        vendor_timeout: int = 10,
        connector: Connector | None = None,
        ssl_context: ssl.SSLContext | None = None,
        require_livemode: bool = True,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if not api_key or any(c.isspace() or ord(c) < 32 for c in api_key):
            raise ValueError("the verifier API key is empty or contains whitespace")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not 2 <= vendor_timeout <= 60:
            raise ValueError(f"vendor_timeout must be 2..60 seconds, got {vendor_timeout!r}")
        self._endpoint = _endpoint(base_url)
        self._key = api_key
        self.timeout = float(timeout)
        self.vendor_timeout = int(vendor_timeout)
        self._connector: Connector = connector or TrioConnector()
        self._ssl_context = ssl_context
        self.require_livemode = require_livemode
        self._limit = max_response_bytes
        self.redact = Redactor([api_key])
        self.requests = 0

    def __repr__(self) -> str:
        return f"<MillionVerifierClient {self.endpoint}>"

    @property
    def endpoint(self) -> str:
        """The API URL without its query (safe to log)."""
        return str(self._endpoint)

    def _target(self, address: str) -> str:
        query = urlencode(
            {"api": self._key, "email": address, "timeout": str(self.vendor_timeout)}
        )
        return f"{self._endpoint.prefix}{API_PATH}?{query}"

    def _request(self, address: str) -> bytes:
        return (
            f"GET {self._target(address)} HTTP/1.1\r\n"
            f"Host: {self._endpoint.host_header}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept: application/json\r\n"
            "Accept-Encoding: identity\r\n"
            "Connection: close\r\n"
            "\r\n"
        ).encode("ascii")

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _exchange(self, address: str, sent: list[bool]) -> tuple[int, dict[str, str], bytes]:
        ep = self._endpoint
        stream: trio.abc.Stream = await self._connector.connect(ep.host, ep.port)
        try:
            if ep.scheme == "https":
                tls = trio.SSLStream(
                    stream, self._context(), server_hostname=ep.host, https_compatible=True
                )
                stream = tls
                await tls.do_handshake()
            request = self._request(address)
            sent[0] = True
            await stream.send_all(request)
            return await _read_response(stream, self._limit)
        finally:
            await trio.aclose_forcefully(stream)

    async def verify(self, address: str) -> VerifierAnswer:
        """Ask about one address. Raises VerifierUnavailable / VerifierRejected (see module)."""
        address = _check_address(address)
        self.requests += 1
        sent = [False]  # set once request bytes may have left: the vendor may have billed
        where = self.endpoint
        try:
            with trio.move_on_after(self.timeout) as scope:
                status, headers, body = await self._exchange(address, sent)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            detail = self.redact(f"{type(exc).__name__}: {exc}")[:_SNIPPET]
            raise VerifierUnavailable(
                f"{where}: connection failed: {detail}",
                kind=UnavailableKind.CONNECTION,
                may_have_billed=sent[0],
            ) from None
        except _ProtocolError as exc:
            raise VerifierUnavailable(
                f"{where}: {self.redact(str(exc))}",
                kind=UnavailableKind.MALFORMED,
                may_have_billed=sent[0],
            ) from None
        if scope.cancelled_caught:
            raise VerifierUnavailable(
                f"{where}: no answer within {self.timeout:g}s",
                kind=UnavailableKind.TIMEOUT,
                may_have_billed=sent[0],
            )
        return self._interpret(status, headers, body, address)

    def _snippet(self, body: bytes) -> str:
        text = body[: _SNIPPET * 2].decode("utf-8", "replace")
        return self.redact(" ".join(text.split()))[:_SNIPPET]

    def _interpret(
        self, status: int, headers: Mapping[str, str], body: bytes, address: str
    ) -> VerifierAnswer:
        where = self.endpoint
        if status == 200:
            try:
                return parse_answer(
                    body, address, require_livemode=self.require_livemode, redactor=self.redact
                )
            except VerifierError as exc:
                # Re-raise with the endpoint in front, same type and attributes.
                exc.args = (f"{where}: {exc}",)
                raise
        snippet = self._snippet(body)
        suffix = f": {snippet}" if snippet else ""
        if status == 429:
            return self._raise_unavailable(
                f"{where}: HTTP 429 rate limited{suffix}",
                UnavailableKind.RATE_LIMITED,
                status,
                billed=False,
                retry_after=parse_retry_after(headers.get("retry-after")),
            )
        if status == 408:
            return self._raise_unavailable(
                f"{where}: HTTP 408{suffix}", UnavailableKind.TIMEOUT, status, billed=False
            )
        if status >= 500:
            # 503 is "not now" (overload, maintenance): refused before any work. Other 5xx
            # (500, 502, 504) may come after the backend did the verification.
            return self._raise_unavailable(
                f"{where}: HTTP {status}{suffix}",
                UnavailableKind.SERVER_ERROR,
                status,
                billed=status != 503,
                retry_after=parse_retry_after(headers.get("retry-after")),
            )
        if status in (401, 403):
            raise VerifierRejected(
                f"{where}: HTTP {status}: API key refused{suffix}",
                kind=RejectedKind.INVALID_KEY,
                status=status,
            )
        if status == 402:
            raise VerifierRejected(
                f"{where}: HTTP 402: credits exhausted{suffix}",
                kind=RejectedKind.CREDITS_EXHAUSTED,
                status=status,
            )
        # Redirects are never followed (they would carry the key elsewhere); other 4xx mean the
        # request itself is wrong (base URL, path): asking again will not help.
        raise VerifierRejected(
            f"{where}: unexpected HTTP {status}{suffix}",
            kind=RejectedKind.HTTP_STATUS,
            status=status,
        )

    @staticmethod
    def _raise_unavailable(
        message: str,
        kind: UnavailableKind,
        status: int,
        *,
        billed: bool,
        retry_after: float | None = None,
    ) -> VerifierAnswer:
        raise VerifierUnavailable(
            message, kind=kind, may_have_billed=billed, retry_after=retry_after, status=status
        )
