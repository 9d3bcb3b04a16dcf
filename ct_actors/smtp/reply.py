"""SMTP replies and commands as pure data: an incremental reply parser and a command formatter.

No I/O and no clock here; `ct_actors.smtp.client` is the async shell around it.

Reply syntax (RFC 5321 §4.2): ``Reply-code [ SP text ] CRLF`` for the last line and
``Reply-code "-" text CRLF`` for every earlier line of a multi-line reply; all lines of one reply
carry the same code. We accept a bare LF as line end (common in the wild), reject mixed codes,
cap line length and line count, and decode text as UTF-8 with replacement (servers send Latin-1
and worse; the text is only ever used for classification and audit).

Enhanced status codes (RFC 3463, advertised via RFC 2034 ENHANCEDSTATUSCODES) are taken from
the start of the first line's text: ``class.subject.detail`` with class 2, 4 or 5 and 1-3 digit
subject and detail. We parse them whether or not the extension was advertised (the greeting comes
before EHLO, and plenty of servers send them anyway), but only when the class agrees with the
first digit of the reply code (RFC 2034 §4, RFC 3463 §2): "550 2.0.1 ..." is text, not a code.
A leading "#" (as in Exchange's "550 #5.7.1 ...") is tolerated. RFC 2034 repeats the code on
every line of a multi-line reply; we strip it from each line that starts with the same code, and
only as a prefix, so text lines read naturally.
"""

from __future__ import annotations

import re

from ct_actors.smtp.errors import SmtpCommandRefused, SmtpProtocolError
from ct_actors.smtp.types import ENHANCED_RE, EnhancedStatus, Reply, Stage

MAX_LINE_LENGTH = 4096
"""Bytes per reply line, without the line end. RFC 5321 §4.5.3.1.5 says 512 with CRLF; real
servers exceed that (long Gmail/Microsoft explanations) so we are lenient, but bounded."""

MAX_REPLY_LINES = 100
MAX_COMMAND_LENGTH = 512
"""Octets per command line including CRLF (RFC 5321 §4.5.3.1.4)."""

def _build_reply(code: int, texts: list[str]) -> Reply:
    first = texts[0]
    if first[:1] in _ENHANCED_START:
        m = ENHANCED_RE.match(first)
        if m is not None and ord(m[1]) - 48 == code // 100:
            enhanced = EnhancedStatus(int(m[1]), int(m[2]), int(m[3]))
            prefix = m[0].lstrip("#")
            return Reply(code, tuple(_strip_prefix(t, prefix) for t in texts), enhanced)
    if len(texts) == 1:
        return Reply(code, (first.strip(),), None)
    return Reply(code, tuple(t.strip() for t in texts), None)


_ENHANCED_START = frozenset("245#")


def _strip_prefix(text: str, prefix: str) -> str:
    """Remove `prefix` (optionally after "#") when it is followed by whitespace or the end."""
    body = text[1:] if text[:1] == "#" else text
    if body.startswith(prefix):
        rest = body[len(prefix) :]
        if not rest or rest[0] in " \t":
            return rest.strip()
    return text.strip()


class ReplyParser:
    """Incremental parser: feed it whatever `receive_some` returned, get complete replies back.

    After it raises `SmtpProtocolError` its state is undefined; discard it with the connection.
    """

    __slots__ = ("_code", "_tail", "_texts", "max_line_length", "max_lines")

    def __init__(
        self, *, max_line_length: int = MAX_LINE_LENGTH, max_lines: int = MAX_REPLY_LINES
    ) -> None:
        self._tail = b""
        self._code: int | None = None
        self._texts: list[str] = []
        self.max_line_length = max_line_length
        self.max_lines = max_lines

    @property
    def has_partial(self) -> bool:
        """Bytes of an incomplete line, or lines of an incomplete multi-line reply, are held."""
        return bool(self._tail) or self._code is not None

    def feed(self, data: bytes) -> list[Reply]:
        if self._tail:
            data = self._tail + data
        lines = data.split(b"\n")  # C speed; the last element is the incomplete remainder
        tail = lines.pop()
        limit = self.max_line_length
        if len(tail) > limit + 1:  # +1: a CR whose LF has not arrived yet
            raise SmtpProtocolError(f"reply line longer than {limit} bytes")
        self._tail = tail
        out: list[Reply] = []
        texts = self._texts
        for raw in lines:
            if raw[-1:] == b"\r":
                raw = raw[:-1]
            if len(raw) > limit:
                raise SmtpProtocolError(f"reply line longer than {limit} bytes")
            head = raw[:3]
            if len(head) < 3 or not head.isdigit() or head[0] not in b"2345":
                raise SmtpProtocolError(f"malformed reply line {_preview(raw)}")
            sep = raw[3:4]
            if sep != b"-" and sep != b" " and sep:
                raise SmtpProtocolError(f"malformed reply line {_preview(raw)}")
            code = int(head)
            if self._code is None:
                self._code = code
            elif code != self._code:
                raise SmtpProtocolError(f"multi-line reply mixes codes {self._code} and {code}")
            texts.append(raw[4:].decode("utf-8", "replace"))
            if len(texts) > self.max_lines:
                raise SmtpProtocolError(f"reply longer than {self.max_lines} lines")
            if sep != b"-":
                out.append(_build_reply(code, texts))
                self._code = None
                self._texts = texts = []
        return out


def _preview(raw: bytes) -> str:
    return repr(raw[:40].decode("ascii", "replace"))


def parse_reply(data: bytes | str) -> Reply:
    """Parse exactly one complete reply (tests, fixtures, config). A missing final line end is
    supplied."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\r\n"
    parser = ReplyParser()
    replies = parser.feed(data)
    if len(replies) != 1 or parser.has_partial:
        raise SmtpProtocolError(f"expected exactly one reply, got {len(replies)}")
    return replies[0]


# ---------------------------------------------------------------------------------------------
# Commands

_VERB_STAGE: dict[str, Stage] = {
    "EHLO": "ehlo",
    "HELO": "ehlo",
    "STARTTLS": "starttls",
    "MAIL": "mail",
    "RCPT": "rcpt",
    "RSET": "rset",
    "NOOP": "noop",
    "QUIT": "quit",
}
"""The complete allow-list. There is no DATA, BDAT or BURL: this client never sends a message."""

_NEVER = frozenset({"DATA", "BDAT", "BURL"})
_SAFE_ARG_RE = re.compile(r"[\x20-\x7e]*")


def stage_of(verb: str) -> Stage:
    """The audit stage of an allowed verb."""
    stage = _VERB_STAGE.get(verb.upper())
    if stage is None:
        raise SmtpCommandRefused("command", f"verb {verb[:20]!r} is not allowed")
    return stage


def format_command(verb: str, arg: str | None = None) -> bytes:
    """``VERB[ SP arg] CRLF`` as bytes, or `SmtpCommandRefused`.

    Refused: DATA/BDAT/BURL and any verb not on the allow-list; arguments with CR, LF or any other
    control character (command injection: "a@b.com>\\r\\nDATA" must never reach the wire);
    non-ASCII (we never negotiate SMTPUTF8); lines longer than 512 octets.
    """
    upper = verb.upper()
    if upper in _NEVER:
        raise SmtpCommandRefused("command", f"{upper} is never sent: this client does not deliver")
    stage = stage_of(upper)
    if arg is None or arg == "":
        line = upper
    else:
        if _SAFE_ARG_RE.fullmatch(arg) is None:
            if "\r" in arg or "\n" in arg:
                raise SmtpCommandRefused(stage, "CR/LF in command argument (injection)")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in arg):
                raise SmtpCommandRefused(stage, "control character in command argument")
            raise SmtpCommandRefused(stage, "non-ASCII command argument (no SMTPUTF8)")
        line = f"{upper} {arg}"
    if len(line) + 2 > MAX_COMMAND_LENGTH:
        raise SmtpCommandRefused(stage, f"command longer than {MAX_COMMAND_LENGTH} octets")
    return line.encode("ascii") + b"\r\n"


_PATH_FORBIDDEN_RE = re.compile(r"[<>\s]")


def mail_from_arg(sender: str) -> str:
    """``FROM:<sender>``; an empty sender is the null reverse-path ``FROM:<>``."""
    return f"FROM:<{_path(sender, 'mail', allow_empty=True)}>"


def rcpt_to_arg(address: str) -> str:
    """``TO:<address>``."""
    return f"TO:<{_path(address, 'rcpt', allow_empty=False)}>"


def _path(address: str, stage: Stage, *, allow_empty: bool) -> str:
    if not address:
        if allow_empty:
            return ""
        raise SmtpCommandRefused(stage, "empty address")
    if _PATH_FORBIDDEN_RE.search(address):
        if "\r" in address or "\n" in address:
            raise SmtpCommandRefused(stage, "CR/LF in address (injection)")
        raise SmtpCommandRefused(stage, "angle bracket or whitespace in address")
    return address


def parse_extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper-cased) to their parameter string; the first line is the greeting."""
    out: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.partition(" ")
        if keyword:
            out[keyword.upper()] = params.strip()
    return out
