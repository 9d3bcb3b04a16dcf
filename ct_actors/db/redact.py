"""Keep database passwords out of every message, log line and exception.

The patterns live in `ct_actors.redact` (one implementation for the whole daemon); this module
adds what the store needs on its error paths: the secrets of one particular URL, in every
spelling they may appear in, and a `Redactor` bound to that URL. Everything here is total: it
never raises, because it runs on error paths where a second exception would hide the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote

from ct_actors import redact as _common

MASK = _common.MASK
MIN_SECRET_LENGTH = 3

# Query-string / keyword parameters that carry secrets in libpq-style DSNs.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
# password=secret in a keyword/value DSN ("host=x password=y")
_KV_SECRET = re.compile(r"(?P<key>\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.I)


def redact_url(url: str) -> str:
    """`postgresql://user:pw@host:5432/db?password=pw` -> `postgresql://user:***@host:5432/db?password=***`."""
    try:
        return _common.redact_url(str(url))
    except Exception:
        return "<unprintable url>"


def scrub_text(text: str) -> str:
    """Mask credentials in free text by shape alone (URL userinfo, password=...). Never raises."""
    try:
        return _common.redact_text(str(text))
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
        return scrub_text(out)
