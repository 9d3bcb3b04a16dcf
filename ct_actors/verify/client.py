"""MillionVerifier's single-address API (v3) over httpx: one GET per `verify()`.

    GET {base_url}/api/v3/?api={key}&email={address}&timeout={seconds}

What the answer looks like and how it is read is `verify.answer`; the typed errors, and what
the caller does with each, are `verify.errors`.

The HTTP is httpx's `AsyncClient`, on trio through anyio:

* TLS is verified against the system's trust store (`ssl.create_default_context()`, as before
  httpx: the operator's distribution manages the CAs, not a bundled certifi);
* redirects are never followed: the key is in the query string, and a redirect must never carry
  it elsewhere. A 3xx is a `VerifierRejected` (our base URL is wrong), its Location unused;
* nothing comes from the environment (`trust_env=False`): an `HTTPS_PROXY` would see the key;
* cookies are refused (none is needed, and one would go back with every request);
* keep-alive connections are reused for the client's life: one client per daemon, closed by
  `aclose()` on shutdown (`EmailVerifier.aclose`).

Our `timeout` bounds the whole exchange (connect, TLS, request, answer) with a trio deadline —
httpx's own timeouts are per phase, so they are set to the same value only as a backstop. The
vendor's `timeout` parameter (2..60 s) bounds how long it spends on the remote mail server and
must be a few seconds shorter.

Secrets: the key travels in the URL, and httpx's exceptions and its request log line carry that
URL. So an exception's text reaches a message only with every URL query cut and the key
masked (raw and %-encoded), our errors are raised `from None`, and a filter on the `httpx`
logger cuts the query out of its records.

The network seam is the `transport` (an `httpx.AsyncBaseTransport`): `httpx.MockTransport` in
unit tests; by default an `httpx.AsyncHTTPTransport` (plain sockets, not the SMTP prober's
source address).
"""

from __future__ import annotations

import logging
import math
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import httpx
import trio

from ct_actors.redact import Redactor
from ct_actors.verify.answer import SNIPPET_CHARS, VerifierAnswer, parse_answer, parse_retry_after
from ct_actors.verify.errors import (
    RejectedKind,
    UnavailableKind,
    VerifierError,
    VerifierRejected,
    VerifierUnavailable,
)

__all__ = [
    "API_PATH",
    "DEFAULT_BASE_URL",
    "MillionVerifierClient",
    "without_query",
]

DEFAULT_BASE_URL: Final = "https://api.millionverifier.com"
API_PATH: Final = "/api/v3/"
# A verification answer is ~300 bytes; anything near this is not an answer.
MAX_RESPONSE_BYTES: Final = 64 * 1024
USER_AGENT: Final = "ct-actors/0.1 (+EmailVerifier TOOL-019)"
# Bound on closing the pooled connections at shutdown.
CLOSE_TIMEOUT: Final = 2.0
# No cap on connections (the gate's rate limits and the pipeline's concurrency bound them, as
# before httpx); idle ones kept for the next request.
_LIMITS: Final = httpx.Limits(max_connections=None, max_keepalive_connections=20)

# A URL's query (a `?` run with a `=` in it), as it sits in an exception text, a log line, or
# a vendor's or proxy's echo of our request.
_QUERY = re.compile(r"\?(?=[^\s'\"<>]*=)[^\s'\"<>]*")


def without_query(text: str) -> str:
    """`text` with every URL query replaced by `?<query>` (a plain question mark stays)."""
    return _QUERY.sub("?<query>", text) if "?" in text else text


class _NoQueryInRecords(logging.Filter):
    """httpx logs every request at INFO with its full URL (so with the key): cut the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        cut = without_query(text)
        if cut != text:
            record.msg, record.args = cut, None
        return True


_RECORD_FILTER: Final = _NoQueryInRecords()
logging.getLogger("httpx").addFilter(_RECORD_FILTER)


class _ResponseTooLarge(Exception):
    """The body passed the byte limit (internal; becomes VerifierUnavailable MALFORMED)."""


class _Progress:
    """How far one request got, for `may_have_billed`: httpcore reports its phases through the
    `trace` extension, and the vendor may have processed the request once its headers started
    to leave. A transport that reports no phase (a MockTransport) was handed the request, so it
    counts as sent — erring towards "attempt spent", never towards paying twice."""

    __slots__ = ("sent", "traced")

    def __init__(self) -> None:
        self.traced = False
        self.sent = False

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        self.traced = True
        if event.endswith(".send_request_headers.started"):
            self.sent = True

    @property
    def may_have_billed(self) -> bool:
        return self.sent if self.traced else True


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


def default_transport(ssl_context: ssl.SSLContext | None = None) -> httpx.AsyncHTTPTransport:
    """The real network: verified TLS (system trust store unless `ssl_context`), no proxies."""
    return httpx.AsyncHTTPTransport(
        verify=ssl_context or ssl.create_default_context(), trust_env=False, limits=_LIMITS
    )


class MillionVerifierClient:
    """One GET per `verify()`, over one pooled `httpx.AsyncClient` (close with `aclose()`).

    `timeout` bounds the whole exchange; `vendor_timeout` is the API's own `timeout` parameter
    (2..60 s). https certificates are always checked (the key is in the URL); http is for the
    local fake. `transport` is the network seam (default: `default_transport(ssl_context)`).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 20.0,
        vendor_timeout: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
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
        self.require_livemode = require_livemode
        self._limit = max_response_bytes
        self._redactor = Redactor([api_key])
        self.requests = 0
        self._http = httpx.AsyncClient(
            transport=transport or default_transport(ssl_context),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self.timeout),
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": "identity",
            },
        )

    def __repr__(self) -> str:
        return f"<MillionVerifierClient {self.endpoint}>"

    @property
    def endpoint(self) -> str:
        """The API URL without its query (safe to log)."""
        return str(self._endpoint)

    async def aclose(self) -> None:
        """Close the pooled connections (shutdown); bounded, and done even when cancelled."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def redact(self, text: str) -> str:
        """Text from the network made safe for a message: URL queries cut, the key masked."""
        return self._redactor(without_query(text))

    async def _exchange(
        self, address: str, progress: _Progress
    ) -> tuple[int, httpx.Headers, bytes]:
        params = {"api": self._key, "email": address, "timeout": str(self.vendor_timeout)}
        async with self._http.stream(
            "GET", self.endpoint, params=params, extensions={"trace": progress.trace}
        ) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._limit:
                raise _ResponseTooLarge
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._limit:
                    raise _ResponseTooLarge
            return response.status_code, response.headers, bytes(body)

    async def verify(self, address: str) -> VerifierAnswer:
        """Ask about one address. Raises VerifierUnavailable / VerifierRejected (see errors)."""
        address = _check_address(address)
        self.requests += 1
        progress = _Progress()
        try:
            with trio.move_on_after(self.timeout) as scope:
                status, headers, body = await self._exchange(address, progress)
        except _ResponseTooLarge:
            raise self._unavailable(
                f"response larger than {self._limit} bytes", UnavailableKind.MALFORMED, True
            ) from None
        except (httpx.ConnectTimeout, httpx.PoolTimeout):
            raise self._unavailable(
                f"no answer within {self.timeout:g}s", UnavailableKind.TIMEOUT, False
            ) from None
        except httpx.TimeoutException:
            raise self._unavailable(
                f"no answer within {self.timeout:g}s",
                UnavailableKind.TIMEOUT,
                progress.may_have_billed,
            ) from None
        except (httpx.ProtocolError, httpx.DecodingError) as exc:
            # Not HTTP as we need it (a closed connection before the answer, bad framing).
            raise self._unavailable(
                self.redact(str(exc))[:SNIPPET_CHARS],
                UnavailableKind.MALFORMED,
                progress.may_have_billed,
            ) from None
        except (httpx.TransportError, OSError) as exc:
            # ConnectError (refused, TLS handshake failed) happens before any request byte.
            billed = progress.may_have_billed and not isinstance(exc, httpx.ConnectError)
            detail = self.redact(f"{type(exc).__name__}: {exc}")[:SNIPPET_CHARS]
            raise self._unavailable(
                f"connection failed: {detail}", UnavailableKind.CONNECTION, billed
            ) from None
        if scope.cancelled_caught:
            raise self._unavailable(
                f"no answer within {self.timeout:g}s",
                UnavailableKind.TIMEOUT,
                progress.may_have_billed,
            )
        return self._interpret(status, headers, body, address)

    def _unavailable(
        self, message: str, kind: UnavailableKind, billed: bool
    ) -> VerifierUnavailable:
        return VerifierUnavailable(f"{self.endpoint}: {message}", kind=kind, may_have_billed=billed)

    def _snippet(self, body: bytes) -> str:
        text = body[: SNIPPET_CHARS * 2].decode("utf-8", "replace")
        return self.redact(" ".join(text.split()))[:SNIPPET_CHARS]

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
            raise VerifierUnavailable(
                f"{where}: HTTP 429 rate limited{suffix}",
                kind=UnavailableKind.RATE_LIMITED,
                may_have_billed=False,
                retry_after=parse_retry_after(headers.get("retry-after")),
                status=status,
            )
        if status == 408:
            raise VerifierUnavailable(
                f"{where}: HTTP 408{suffix}",
                kind=UnavailableKind.TIMEOUT,
                may_have_billed=False,
                status=status,
            )
        if status >= 500:
            # 503 is "not now" (overload, maintenance): refused before any work. Other 5xx
            # (500, 502, 504) may come after the backend did the verification.
            raise VerifierUnavailable(
                f"{where}: HTTP {status}{suffix}",
                kind=UnavailableKind.SERVER_ERROR,
                may_have_billed=status != 503,
                retry_after=parse_retry_after(headers.get("retry-after")),
                status=status,
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
