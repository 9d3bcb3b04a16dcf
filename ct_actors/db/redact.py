"""Keep database passwords out of every message, log line and exception.

`redact_url` is for showing *which* database we talk to; `Redactor.text` scrubs arbitrary text
(asyncpg exception messages, which may quote the DSN) given the URL whose secret must not leak.
Both are total: they never raise, whatever garbage they are handed, because they run on error
paths where a second exception would hide the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode

MASK = "***"
MIN_SECRET_LENGTH = 3

# Query-string / keyword parameters that carry secrets in libpq-style DSNs.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})

# scheme://user:secret@host (any scheme, so a DSN quoted inside a message is caught too). The
# secret runs greedily to the token's *last* '@': operators paste passwords with raw '@', ':',
# '/' in them, and cutting at the first '@' would leave the tail visible.
_URL_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@?#'\"<>]*:)[^\s'\"<>]*@")
# password=secret in a query string or a keyword/value DSN ("host=x password=y")
_KV_SECRET = re.compile(r"(?P<key>\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.I)


def redact_url(url: str) -> str:
    """`postgresql://user:pw@host:5432/db?sslmode=require&password=pw` ->
    `postgresql://user:***@host:5432/db?sslmode=require&password=***`."""
    try:
        return _redact_url(url)
    except Exception:
        # Unparseable: fall back to pattern scrubbing; better an odd string than a leak.
        return _scrub_patterns(str(url))


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        # Not a URL at all (keyword/value DSN or junk).
        return _scrub_patterns(url)
    # Userinfo ends at the *last* '@': a raw password may contain '@', '/', '?' or '#'. (An '@'
    # inside a query string makes us mask too much, which is the safe way to be wrong.)
    userinfo, at, rest = rest.rpartition("@")
    prefix = ""
    if at:
        user, colon, _password = userinfo.partition(":")
        prefix = f"{user}:{MASK}@" if colon else f"{user}@"
    rest, hash_sep, fragment = rest.partition("#")
    rest, q_sep, query = rest.partition("?")
    if q_sep:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            pairs = [(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs]
            query = urlencode(pairs, safe="*")
    out = f"{scheme}://{prefix}{rest}"
    if q_sep:
        out += f"?{query}"
    if hash_sep:
        out += f"#{fragment}"
    return out


def _scrub_patterns(text: str) -> str:
    text = _URL_USERINFO.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    return _KV_SECRET.sub(lambda m: f"{m.group('key')}{MASK}", text)


def scrub_text(text: str) -> str:
    """Mask credentials in free text by shape alone (URL userinfo, password=...), for messages
    with no particular URL at hand. Never raises."""
    try:
        return _scrub_patterns(str(text))
    except Exception:
        return "<unprintable>"


def url_secrets(url: str) -> list[str]:
    """Every secret carried by `url`, in the spellings it may appear in (raw, percent-decoded,
    percent-encoded), longest first so that replacing them in order never leaves a fragment."""
    found: set[str] = set()
    try:
        _scheme, sep, rest = url.partition("://")
        if sep:
            userinfo, at, rest = rest.rpartition("@")
            if at and ":" in userinfo:
                found.add(userinfo.partition(":")[2])
            query = rest.partition("#")[0].partition("?")[2]
            for k, v in parse_qsl(query, keep_blank_values=True):
                if k.lower() in _SECRET_PARAMS:
                    found.add(v)
        for m in _KV_SECRET.finditer(url):
            found.add(m.group(0)[len(m.group("key")) :].strip("'"))
    except Exception:
        pass
    spellings: set[str] = set()
    for secret in found:
        # Masking a one- or two-character "secret" by value would shred every message while
        # protecting nothing; the structural patterns still mask it inside URLs and password=.
        if len(secret) >= MIN_SECRET_LENGTH:
            decoded = unquote(secret)
            spellings.update(
                {secret, decoded, quote(secret, safe=""), quote(decoded, safe=""), quote(decoded)}
            )
    spellings = {s for s in spellings if len(s) >= MIN_SECRET_LENGTH}
    return sorted(spellings, key=len, reverse=True)


@dataclass(frozen=True)
class Redactor:
    """Scrubs the secrets of one URL out of any text. Holds the secrets, so keep it private and
    never print it (repr is masked)."""

    url: str = field(repr=False)
    secrets: tuple[str, ...] = field(init=False, repr=False)
    redacted_url: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", tuple(url_secrets(self.url)))
        object.__setattr__(self, "redacted_url", redact_url(self.url))

    def text(self, text: object) -> str:
        try:
            out = str(text)
        except Exception:
            out = f"<unprintable {type(text).__name__}>"
        for secret in self.secrets:
            out = out.replace(secret, MASK)
        return _scrub_patterns(out)
