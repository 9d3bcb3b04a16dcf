"""Turn a batch of `Outcome`s into the parallel arrays of `queries.WRITE_OUTCOMES`.

Pure and synchronous, so it runs on the trio side before the single crossing into asyncio.
Everything here is about never letting one record's content fail a whole batch: evidence and
messages carry text from hostile SMTP servers, and PostgreSQL rejects NUL characters in text and
jsonb, lone surrogates cannot be encoded as UTF-8, and JSON cannot carry NaN. Those are cleaned
here; a batch that still fails is a bug, not bad luck.

Stored text is also made safe to read (issue 10): every free-text field has a length bound
(FIELD_LIMITS; evidence strings EVIDENCE_STRING_LIMIT, whole evidence EVIDENCE_LIMIT), control
characters are never stored raw (tab and LF are kept, the others become an escape such as \\x1b:
an ESC or BEL from a reply must not reach an operator's terminal through psql), nor are the
bidirectional overrides that can make text read differently than it is; and known secrets
(`SecretMask`: the verifier API key, the database password) are masked wherever a vendor or
server echoed them back.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from ct_actors.db.queries import WRITE_COLUMNS
from ct_actors.outcome import Deferred, Failed, FailureCode, Outcome, Passed

# numeric(5,4) holds [0, 9.9999]; the schema also CHECKs [0, 1].
_CONFIDENCE_QUANTUM = Decimal("0.0001")
# make_interval() overflows long before float does; a deferral longer than this is a bug anyway.
MAX_RETRY_AFTER = 30 * 24 * 3600.0
# Evidence is an audit trail, not a dump: deeper nesting than this is cut, which also makes
# self-referencing structures harmless.
_MAX_DEPTH = 24
# One encoder for all rows (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

# Characters of every stored column that holds free text (a domain from the spine or an MX
# name is valid DNS long before these limits; a reason quoting a 100 kB input is not).
FIELD_LIMITS: dict[str, int] = {
    "domain_normalised": 255,
    "mx_host": 255,
    "email_method": 320,
    "method_type": 64,
    "blocking_reason": 2000,
    "severity": 32,
    "reason": 1000,
}
EVIDENCE_STRING_LIMIT = 2000
EVIDENCE_LIMIT = 65_536  # characters of the whole evidence JSON
_EVIDENCE_HEAD = 16_384  # what an oversized evidence keeps (as a string)
# C0 and C1 controls but tab and LF (whitespace the audit keeps: a spine domain with a tab
# is stored as it was), DEL, and the bidi embeddings/overrides/isolates (Unicode TR #9): never
# stored raw. CR is escaped too: a bare CR can overwrite what a terminal already shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape_control(m: re.Match[str]) -> str:
    c = m.group(0)
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


class SecretMask:
    """Masks known secret values (raw and %-encoded) in stored text. Only known values: the
    patterns that catch credentials by shape belong to the logs, not to an audit trail."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants = {v for s in secrets if len(s) >= 3 for v in (s, quote(s, safe=""))}
        ordered = sorted(variants, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub("***", text)

    def __bool__(self) -> bool:
        return self._pattern is not None


NO_SECRETS = SecretMask()


@dataclass(slots=True)
class EncodedBatch:
    """The arrays for WRITE_OUTCOMES, in WRITE_COLUMNS order (sorted by outreach_id, so
    concurrent writers take row locks in the same order and cannot deadlock each other)."""

    columns: dict[str, list[Any]] = field(
        default_factory=lambda: {name: [] for name, _typ in WRITE_COLUMNS}
    )

    def args(self) -> list[list[Any]]:
        return [self.columns[name] for name, _typ in WRITE_COLUMNS]

    def __len__(self) -> int:
        return len(self.columns["outreach_id"])


def clean_text(
    value: str | None, limit: int | None = None, mask: SecretMask = NO_SECRETS
) -> str | None:
    """Text PostgreSQL will accept and an operator can read safely: known secrets masked, no
    raw control characters (NUL included), no lone surrogates (surrogateescape'd bytes from a
    server reply become visible \\udcXX escapes instead of an encoding error), at most
    `limit` characters (the cut says how long the original was)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if mask:
        value = mask(value)
    if _CONTROL.search(value) is not None:
        value = _CONTROL.sub(_escape_control, value)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is not None and len(value) > limit:
        note = f"…[{len(value)} chars]"
        value = value[: max(limit - len(note), 0)] + note
    return value


def _jsonable(obj: Any, mask: SecretMask, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        return "<truncated: nested too deep>"
    if obj is None or isinstance(obj, bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, str):
        return clean_text(obj, EVIDENCE_STRING_LIMIT, mask)
    if isinstance(obj, enum.Enum):
        return _jsonable(obj.value, mask, depth + 1)
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        text = bytes(obj).decode("utf-8", "backslashreplace")
        return clean_text(text, EVIDENCE_STRING_LIMIT, mask)
    if isinstance(obj, uuid.UUID | dt.datetime | dt.date | dt.time | dt.timedelta):
        return str(obj)
    if isinstance(obj, Mapping):
        return {
            clean_text(str(k), EVIDENCE_STRING_LIMIT, mask): _jsonable(v, mask, depth + 1)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v, mask, depth + 1) for v in obj]
    return clean_text(repr(obj), EVIDENCE_STRING_LIMIT, mask)


def encode_evidence(
    evidence: Mapping[str, Any] | None, mask: SecretMask = NO_SECRETS
) -> str | None:
    """Evidence as JSON text (cast to jsonb in SQL), bounded and clean (module docstring).
    Never raises."""
    if evidence is None:
        return None
    # Fast path: plain JSON-able evidence whose text needs no cleaning. Without any backslash
    # (JSON escapes every C0 control, and `"` inside a string, with one), splitting at `"`
    # yields every string whole, so their lengths are checked in one C-speed pass; C1 and
    # bidi controls are not escaped by JSON and are looked for in non-ASCII text only.
    try:
        text = _JSON.encode(evidence)
        if (
            "\\" not in text
            and len(text) <= EVIDENCE_LIMIT
            and max(map(len, text.split('"'))) <= EVIDENCE_STRING_LIMIT
            and (text.isascii() or (_encodable(text) and _CONTROL.search(text) is None))
            and (not mask or mask(text) == text)
        ):
            return text
    except (TypeError, ValueError):
        pass
    try:
        text = _JSON.encode(_jsonable(evidence, mask))
    except Exception as exc:  # pragma: no cover - _jsonable should make this unreachable
        return json.dumps({"unencodable_evidence": clean_text(repr(exc), 500)})
    if len(text) > EVIDENCE_LIMIT:
        # Still valid JSON (jsonb), still readable, never unbounded.
        return _JSON.encode(
            {"evidence_truncated": True, "chars": len(text), "head": text[:_EVIDENCE_HEAD]}
        )
    return text


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_confidence(outreach_id: uuid.UUID, value: Decimal | float | int) -> Decimal:
    try:
        dec = Decimal(str(value)) if not isinstance(value, Decimal) else value
        dec = dec.quantize(_CONFIDENCE_QUANTUM)
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{outreach_id}: confidence {value!r} is not a number") from exc
    if not dec.is_finite() or dec < 0 or dec > 1:
        raise ValueError(f"{outreach_id}: confidence {value!r} outside [0, 1]")
    return dec


def encode_retry_after(outreach_id: uuid.UUID, value: float) -> float:
    seconds = float(value)
    if math.isnan(seconds):
        raise ValueError(f"{outreach_id}: retry_after is NaN")
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def encode_outcomes(
    outcomes: Sequence[Outcome],
    claims: Mapping[uuid.UUID, int] | None = None,
    mask: SecretMask = NO_SECRETS,
) -> EncodedBatch:
    """Validate and encode. Raises ValueError (a caller bug, nothing is written) for a record
    that appears twice in one batch or a confidence outside [0, 1]. `claims`: the lease
    `attempts` each record was claimed with (the write's fence); records without one are
    written unfenced. `mask`: known secrets, masked in every stored text."""
    claims = claims or {}
    lim = FIELD_LIMITS
    seen: set[uuid.UUID] = set()
    for outcome in outcomes:
        if outcome.outreach_id in seen:
            raise ValueError(f"{outcome.outreach_id} appears more than once in one batch")
        seen.add(outcome.outreach_id)

    batch = EncodedBatch()
    c = batch.columns
    # Column lists bound once; each row appends exactly one value to every list.
    col_id, col_kind = c["outreach_id"], c["kind"]
    col_domain, col_mx, col_evidence = c["domain_normalised"], c["mx_host"], c["evidence"]
    col_method, col_type = c["email_method"], c["method_type"]
    col_conf, col_catchall = c["confidence_score"], c["is_catchall"]
    col_code, col_reason_text = c["failure_code"], c["blocking_reason"]
    col_severity, col_imo, col_stage = c["severity"], c["imo_stage"], c["pipeline_stage"]
    col_retry, col_reason = c["retry_after"], c["reason"]
    col_claim, col_duration = c["claim_attempt"], c["duration"]
    for outcome in sorted(outcomes, key=lambda o: o.outreach_id.int):
        oid = outcome.outreach_id
        result = outcome.result
        col_id.append(oid)
        col_claim.append(claims.get(oid))
        duration = float(outcome.duration)
        col_duration.append(duration if math.isfinite(duration) else None)
        col_domain.append(clean_text(outcome.domain, lim["domain_normalised"], mask))
        col_mx.append(clean_text(outcome.mx_host, lim["mx_host"], mask))
        col_evidence.append(encode_evidence(result.evidence, mask))
        if isinstance(result, Passed):
            col_kind.append("pass")
            col_method.append(clean_text(result.email_method, lim["email_method"], mask))
            col_type.append(clean_text(result.method_type, lim["method_type"], mask))
            col_conf.append(encode_confidence(oid, result.confidence))
            col_catchall.append(bool(result.is_catchall))
            for col in (col_code, col_reason_text, col_severity, col_imo, col_stage):
                col.append(None)
            col_retry.append(None)
            col_reason.append(None)
        elif isinstance(result, Failed):
            code = FailureCode(result.code)
            if code is FailureCode.NOT_FOUND:
                col_kind.append("fail_error")
            elif code is FailureCode.ALREADY_PROCESSED:
                col_kind.append("noop")
            else:
                col_kind.append("fail")
            for col in (col_method, col_type, col_conf, col_catchall):
                col.append(None)
            col_code.append(code.value)
            col_reason_text.append(
                clean_text(result.blocking_reason, lim["blocking_reason"], mask)
            )
            col_severity.append(clean_text(result.severity, lim["severity"], mask))
            col_imo.append(code.imo_stage)
            col_stage.append(code.pipeline_stage)
            col_retry.append(None)
            col_reason.append(None)
        elif isinstance(result, Deferred):
            col_kind.append("defer")
            for col in (col_method, col_type, col_conf, col_catchall):
                col.append(None)
            for col in (col_code, col_reason_text, col_severity, col_imo, col_stage):
                col.append(None)
            col_retry.append(encode_retry_after(oid, result.retry_after))
            col_reason.append(clean_text(result.reason, lim["reason"], mask))
        else:  # pragma: no cover - exhaustive over Result
            raise TypeError(f"unknown result type {type(result).__name__}")
    lengths = {len(v) for v in c.values()}
    assert len(lengths) == 1, "encoder appended unevenly"  # guards future edits of this loop
    return batch
