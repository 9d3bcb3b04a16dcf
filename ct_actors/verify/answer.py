"""The vendor's answer, parsed: MillionVerifier's single-address API (v3) JSON -> `VerifierAnswer`
or the typed error it stands for; and `Retry-After`. Pure: no I/O, no clock but the one passed.

    GET {base_url}/api/v3/?api={key}&email={address}&timeout={seconds}

answers (HTTP 200, JSON):

    {"email": "ann.lee@acme.com", "quality": "good", "result": "ok", "resultcode": 1,
     "subresult": "ok", "free": false, "role": false, "didyoumean": "", "credits": 12345,
     "executiontime": 1, "error": "", "livemode": true}

`result` is one of ok / catch_all / unknown / invalid / disposable (resultcode 1, 2, 3, 6, 5);
an error answer has `result` "error" (resultcode 4) and a non-empty `error`, and it too comes
with HTTP 200 ("Apikey not found", "Insufficient credits", ...). Vendor text goes into a message
only through `redactor` (the client's: the key masked, URL queries cut).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ct_actors.redact import Redactor
from ct_actors.verify.errors import (
    RejectedKind,
    UnavailableKind,
    VerifierError,
    VerifierRejected,
    VerifierUnavailable,
)

__all__ = [
    "RESULT_CODES",
    "RESULT_VERDICTS",
    "SNIPPET_CHARS",
    "VendorVerdict",
    "VerifierAnswer",
    "parse_answer",
    "parse_retry_after",
]

SNIPPET_CHARS: Final = 200  # characters of vendor text quoted in an error message


class VendorVerdict(enum.StrEnum):
    """What the vendor says about an address, in our words (its raw `result` is kept as
    `VerifierAnswer.result` / `vendor_result`)."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"
    CATCH_ALL = "catch_all"
    DISPOSABLE = "disposable"


# The vendor's `result` -> our verdict. "error" is not a verdict (see parse_answer).
RESULT_VERDICTS: Final[dict[str, VendorVerdict]] = {
    "ok": VendorVerdict.VALID,
    "catch_all": VendorVerdict.CATCH_ALL,
    "unknown": VendorVerdict.UNKNOWN,
    "invalid": VendorVerdict.INVALID,
    "disposable": VendorVerdict.DISPOSABLE,
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


@dataclass(frozen=True, slots=True)
class VerifierAnswer:
    """A verdict from the vendor."""

    address: str
    verdict: VendorVerdict
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


def _error_answer(message: str, redact: Callable[[str], str]) -> VerifierError:
    text = redact(message.strip())[:SNIPPET_CHARS]
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
    redactor: Callable[[str], str] | None = None,
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
