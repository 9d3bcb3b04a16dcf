"""Keep database passwords out of every message, log line and exception.

The patterns live in `ct_actors.redact` (one implementation for the whole daemon); this module
adds what the database driver needs on its error paths: the secrets of one particular URL, in
every spelling they may appear in, and a `UrlRedactor` bound to that URL (the general
`ct_actors.redact.Redactor` for those secrets, plus the masked URL). Everything here is total: it
never raises, because it runs on error paths where a second exception would hide the first.
"""

from __future__ import annotations

import re
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


class UrlRedactor:
    """The secrets of one URL, kept out of any text: the daemon's general
    `ct_actors.redact.Redactor` built for those secrets (every spelling of them, masked by
    value, plus the credential shapes it masks anyway), and the URL itself with them masked.
    Holds the secrets, so keep it private and never print it (repr shows the masked URL)."""

    __slots__ = ("_redact", "redacted_url", "secrets")

    def __init__(self, url: str) -> None:
        self.secrets: tuple[str, ...] = tuple(url_secrets(url))
        self.redacted_url: str = redact_url(url)
        self._redact = _common.Redactor(self.secrets, min_length=MIN_SECRET_LENGTH)

    def __repr__(self) -> str:
        return f"UrlRedactor({self.redacted_url!r})"

    def text(self, text: object) -> str:
        """`text` (anything printable) with the URL's secrets and every credential shape masked.
        Never raises."""
        try:
            out = str(text)
        except Exception:
            out = f"<unprintable {type(text).__name__}>"
        try:
            return self._redact(out)
        except Exception:
            return "<unprintable>"
