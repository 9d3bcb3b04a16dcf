"""Turn a batch of `Outcome`s into the parallel arrays of `queries.WRITE_OUTCOMES`.

Pure and synchronous, so it runs on the trio side before the single crossing into asyncio.
Everything here is about never letting one record's content fail a whole batch: evidence and
messages carry text from hostile SMTP servers, and PostgreSQL rejects NUL characters in text and
jsonb, lone surrogates cannot be encoded as UTF-8, and JSON cannot carry NaN. Those are cleaned
here; a batch that still fails is a bug, not bad luck.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

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


def clean_text(value: str | None) -> str | None:
    """Text PostgreSQL will accept: no NUL, no lone surrogates (surrogateescape'd bytes from
    a server reply become visible \\udcXX escapes instead of an encoding error)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if value.isascii():  # fast path: the overwhelmingly common case
        return value.replace("\x00", "\\x00") if "\x00" in value else value
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _jsonable(obj: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        return "<truncated: nested too deep>"
    if obj is None or isinstance(obj, bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, enum.Enum):
        return _jsonable(obj.value, depth + 1)
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return clean_text(bytes(obj).decode("utf-8", "backslashreplace"))
    if isinstance(obj, uuid.UUID | dt.datetime | dt.date | dt.time | dt.timedelta):
        return str(obj)
    if isinstance(obj, Mapping):
        return {clean_text(str(k)): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in obj]
    return clean_text(repr(obj))


def encode_evidence(evidence: Mapping[str, Any] | None) -> str | None:
    """Evidence as JSON text (cast to jsonb in SQL). Never raises."""
    if evidence is None:
        return None
    # Fast path: plain JSON-able evidence without NUL or lone surrogates (jsonb rejects both).
    try:
        text = _JSON.encode(evidence)
        if "\\u0000" not in text and (text.isascii() or _encodable(text)):
            return text
    except (TypeError, ValueError):
        pass
    try:
        return _JSON.encode(_jsonable(evidence))
    except Exception as exc:  # pragma: no cover - _jsonable should make this unreachable
        return json.dumps({"unencodable_evidence": clean_text(repr(exc))})


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
    outcomes: Sequence[Outcome], claims: Mapping[uuid.UUID, int] | None = None
) -> EncodedBatch:
    """Validate and encode. Raises ValueError (a caller bug, nothing is written) for a record
    that appears twice in one batch or a confidence outside [0, 1]. `claims`: the lease
    `attempts` each record was claimed with (the write's fence); records without one are
    written unfenced."""
    claims = claims or {}
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
        col_domain.append(clean_text(outcome.domain))
        col_mx.append(clean_text(outcome.mx_host))
        col_evidence.append(encode_evidence(result.evidence))
        if isinstance(result, Passed):
            col_kind.append("pass")
            col_method.append(clean_text(result.email_method))
            col_type.append(clean_text(result.method_type))
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
            col_reason_text.append(clean_text(result.blocking_reason))
            col_severity.append(clean_text(result.severity))
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
            col_reason.append(clean_text(result.reason))
        else:  # pragma: no cover - exhaustive over Result
            raise TypeError(f"unknown result type {type(result).__name__}")
    lengths = {len(v) for v in c.values()}
    assert len(lengths) == 1, "encoder appended unevenly"  # guards future edits of this loop
    return batch
