"""The verifier client's typed errors: what the caller must do follows from the type.

* `VerifierUnavailable`: transient (timeout, connection trouble, 429, 5xx, a malformed or
  partial answer, an unexpected error message). Never a verdict. `may_have_billed` says whether
  the vendor may have processed (and billed) the request; `retry_after` carries a 429/503's
  `Retry-After`.
* `VerifierRejected`: not transient (the key is refused, the credits are spent, a test-mode key
  in production, an HTTP status that means our request is wrong). `exhausted` tells the
  credits case apart: the caller trips `budget_cap_reached` for it.

Messages never contain the API key or the request URL's query (see `verify.client`).
"""

from __future__ import annotations

import enum

__all__ = [
    "RejectedKind",
    "UnavailableKind",
    "VerifierError",
    "VerifierRejected",
    "VerifierUnavailable",
]


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
