"""structlog set-up: JSON lines on stdout in production, a console renderer for humans, and
redaction of secrets in every value (including exception tracebacks) before anything is rendered.

Only the sync logging methods are meant to be used (`log.info(...)`): writing a line is a
non-blocking, buffered write to stdout (journald reads the pipe), and structlog's async variants
are asyncio-only anyway.

Cheapness: loggers are cached on first use and level filtering happens in the bound logger's
methods (a filtered `debug()` is an empty function call). Both make structlog's usual
reconfiguration story awkward -- a cached logger keeps the wrapper class, processors and output
it was built with -- so this module keeps one set of long-lived objects and mutates them in place:

* the wrapper class `_LevelSwitchingLogger` gets the level methods of
  `structlog.make_filtering_bound_logger(level)` copied onto it, so a level change (SIGHUP)
  applies to every logger ever handed out, with no per-call cost;
* the processor list is a single list object, replaced by slice assignment;
* the output sink is a single `_Sink` whose stream is swapped (loggers wrap a `_NamedSink`
  that carries their name and writes through it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from ct_actors.redact import Redactor

__all__ = [
    "LEVELS",
    "as_log",
    "configure_logging",
    "fields_as_log",
    "get_logger",
    "set_level",
    "set_secrets",
]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The methods whose behaviour depends on the minimum level (sync and structlog's async twins,
# plus the level introspection helpers).
_LEVEL_METHODS = (
    "debug",
    "info",
    "warning",
    "warn",
    "error",
    "err",
    "fatal",
    "exception",
    "critical",
    "msg",
    "log",
    "is_enabled_for",
    "get_effective_level",
    "adebug",
    "ainfo",
    "awarning",
    "awarn",
    "aerror",
    "afatal",
    "aexception",
    "acritical",
    "amsg",
    "alog",
)


def _make_level_switching_class() -> type[Any]:
    base = structlog.make_filtering_bound_logger(logging.NOTSET)
    return type("_LevelSwitchingLogger", (base,), {"__module__": __name__})


_LevelSwitchingLogger = _make_level_switching_class()


def _apply_level(level: int) -> None:
    template = structlog.make_filtering_bound_logger(level)
    for name in _LEVEL_METHODS:
        if name in vars(template):
            setattr(_LevelSwitchingLogger, name, vars(template)[name])


class _Sink:
    """The one output object every cached logger writes to; `stream` can be swapped."""

    def __init__(self, stream: TextIO | None = None) -> None:
        # None: whatever sys.stdout is at write time (pytest swaps it per test).
        self.stream = stream
        # trio is single-threaded, but to_thread workers (resolver fallbacks, DB drivers) may log
        # too; interleaved half-lines would break JSON parsing downstream.
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        out = self.stream if self.stream is not None else sys.stdout
        with self._lock:
            out.write(message + "\n")
            # Per line: under systemd stdout is a pipe (block-buffered); an unflushed buffer
            # would delay lines in the journal and lose the last ones on a crash.
            out.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _NamedSink:
    """What a logger from `structlog.get_logger(name)` / `get_logger(name)` wraps: carries the
    name (read by `_add_logger_name`) and writes through the shared sink, so swapping the
    stream reaches it."""

    __slots__ = ("name",)

    def __init__(self, name: str | None) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        _SINK.msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_SINK = _Sink()
_PROCESSORS: list[Processor] = []
_REDACTOR: list[Redactor] = [Redactor()]


def _sink_factory(*args: Any) -> _NamedSink:
    # structlog passes get_logger()'s positional arguments here; the first is the name.
    return _NamedSink(str(args[0]) if args else None)


def _add_logger_name(logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


# ─── processors ──────────────────────────────────────────────────────────────────────────────

_PLAIN = (int, float, bool, type(None))
_PLAIN_TEXT = frozenset((*_PLAIN, str))


def _redact_value(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {str(k): _redact_value(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, redact) for v in value]
    if isinstance(value, BaseException):
        # An exception passed as a value (`error=exc`) renders as its message; asyncpg puts the
        # DSN in some of those.
        return redact(f"{type(value).__name__}: {value}")
    # Anything else is rendered through str() by the JSON serialiser / console renderer; do it
    # here so its text is redacted too.
    return redact(str(value))


def _redact_processor(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    redact = _REDACTOR[0]
    for key, value in event_dict.items():
        if type(value) is str:  # the common case, without the generic walk
            event_dict[key] = redact(value)
        elif not isinstance(value, _PLAIN):
            event_dict[key] = _redact_value(value, redact)
    return event_dict


def _json_default(value: Any) -> Any:
    # Reached only for values the redaction processor left alone; kept for safety.
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return repr(value)


# One encoder, built once: json.dumps with non-default options constructs a new encoder per
# call, which is most of its cost on small dicts. JSONEncoder.encode uses the C accelerator.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_json_default, check_circular=False
)


def _serialise(obj: Any, **_kw: Any) -> str:
    return _ENCODER.encode(obj)


def _build_processors(fmt: Literal["json", "console"], colors: bool) -> list[Processor]:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.StackInfoRenderer(),
        # Turn exc_info into text *before* redaction so tracebacks are redacted too (the
        # console renderer would otherwise format the live exception itself, unredacted).
        structlog.processors.format_exc_info,
        _redact_processor,
        # Added after redaction: our own fields need no scanning.
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    if fmt == "json":
        return [*shared, structlog.processors.JSONRenderer(serializer=_serialise)]
    return [
        *shared,
        structlog.dev.ConsoleRenderer(colors=colors, timestamp_key="ts"),
    ]


# ─── public API ──────────────────────────────────────────────────────────────────────────────


def _level_number(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r} (expected one of {', '.join(LEVELS)})"
        ) from None


def configure_logging(
    fmt: Literal["json", "console"] = "json",
    level: str = "info",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog for the whole process. Safe to call again (SIGHUP, tests): loggers
    obtained earlier follow the new level, format, stream and secrets.

    stream=None writes to whatever sys.stdout is at the time of each write (so test capture and
    redirections work); pass a stream to pin the output.
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (expected 'json' or 'console')")
    level_no = _level_number(level)
    out = stream if stream is not None else sys.stdout
    colors = fmt == "console" and bool(getattr(out, "isatty", lambda: False)())

    _SINK.stream = stream
    _REDACTOR[0] = Redactor(secrets)
    _PROCESSORS[:] = _build_processors(fmt, colors)
    _apply_level(level_no)
    _bridge_stdlib_logging()
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=cast(type[FilteringBoundLogger], _LevelSwitchingLogger),
        context_class=dict,
        logger_factory=_sink_factory,
        cache_logger_on_first_use=True,
    )


class _StdlibBridge(logging.Handler):
    """Records of the standard `logging` module (asyncpg's pool, asyncio's default exception
    handler during a database outage) as `library_log` events of our own log: one JSON line,
    redacted, traceback included as text, instead of plain-text tracebacks on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            method = getattr(logger, record.levelname.lower(), logger.error)
            fields: dict[str, Any] = {"message": record.getMessage()}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            method("library_log", **fields)
        except Exception:  # pragma: no cover - logging must never raise into the caller
            self.handleError(record)


def _bridge_stdlib_logging() -> None:
    """Route the standard library's root logger through `_StdlibBridge` (idempotent). Libraries
    log warnings and errors; their debug/info chatter stays out."""
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StdlibBridge)]
    root.addHandler(_StdlibBridge())
    root.setLevel(logging.WARNING)


def set_level(level: str) -> None:
    """Change the minimum level of every logger, live (SIGHUP)."""
    _apply_level(_level_number(level))


def set_secrets(secrets: Iterable[str]) -> None:
    """Replace the set of known secret values that are masked in output."""
    _REDACTOR[0] = Redactor(secrets)


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose lines carry `logger=<name>`; use the sync methods only. Equivalent to
    `structlog.get_logger(name)`, which the rest of the code base may use directly."""
    # A lazy proxy: safe to call at import time, before configure_logging().
    return cast(FilteringBoundLogger, structlog.get_logger(name))


# ─── statistics at the logging edge ──────────────────────────────────────────────────────────
# Statistics are values (docs/design.md, "Statistics are values"): every component's
# `statistics()` returns a frozen dataclass with typed fields, and text happens once, here, when
# one becomes a log line (the supervisor's `stats` line, the sim's `sim_stopped` line).


def as_log(value: object) -> Any:
    """A statistics value as a log line's JSON-ready object: a dataclass becomes an object of its
    fields in declaration order, a datetime ISO 8601 text, an enum its value, a Decimal exact
    decimal text. A value whose line is not just its fields (flattened or renamed keys that the
    dashboards read, docs/monitoring.md) says so in its own `as_log()` method, called here."""
    if type(value) in _PLAIN_TEXT:
        return value  # most of a line: counts, flags, names; no walk of the checks below
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        own = getattr(value, "as_log", None)
        if own is not None:
            return own()
        return fields_as_log(value)
    if isinstance(value, dict | Mapping):
        return {_log_key(k): as_log(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_log(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def fields_as_log(value: Any) -> dict[str, Any]:
    """A dataclass's fields, each rendered by `as_log`: for an `as_log()` method that adds to or
    renames a few of them."""
    return {f.name: as_log(getattr(value, f.name)) for f in dataclasses.fields(value)}


def _log_key(key: object) -> str:
    return str(key.value) if isinstance(key, enum.Enum) else str(key)
