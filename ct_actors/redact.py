"""Masking of credentials in URLs, DSNs and free text (error messages, log lines).

Why a module of its own: asyncpg and OS errors echo DSNs back verbatim, operators paste DSNs
with raw `@`/`:`/`/` in the password, and a single leaked line in the journal is a leaked
database. Everything that reaches a log goes through `redact_text` (see `ct_actors.log`).

Redaction errs on the side of masking too much: a masked port in an odd URL is harmless, a
password in the journal is not.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

MASK = "***"

# Secrets shorter than this are not masked by value: masking every "a" or "pg" in every line
# would destroy the log while protecting nothing (such a password is guessable anyway). The
# structural patterns below still mask them where they appear inside a URL or `password=`.
MIN_SECRET_LENGTH = 4

# scheme://user:password@host — the password run is greedy up to the *last* `@` of the token,
# so raw `@`, `:` and `/` inside an unencoded password are masked whole rather than cut at the
# first `@` (which is where libpq would split it, leaving the tail visible in the host part).
# The token ends at whitespace, quotes or angle brackets, which is how URLs sit in error text.
# Patterns start at a literal (`://`, a keyword) rather than at the scheme or key name: a pattern
# that may start at any letter costs a scan of every word, and this runs on every log value.
_URL_USERINFO = r"(?P<url_prefix>://[^\s:/?#@'\"<>]*:)(?P<url_secret>[^\s'\"<>]*)(?=@)"

# key=value credentials: libpq conninfo (`password=... host=...`), query strings
# (`?password=...&sslmode=...`), env dumps (`PGPASSWORD=...`), Python reprs (`password='...'`).
# Any prefix of the key (`sslpassword`, `PGPASSWORD`, `x_api_key`) is simply left in place.
_KEYWORDS = r"(?:password|passwd|pwd|api[_\-]?key|secret|access[_\-]?token|auth[_\-]?token)"
_KV = (
    r"(?P<kv_prefix>" + _KEYWORDS + r"\s*=\s*)"
    r"(?P<kv_secret>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s&'\"]+)"
)
# The JSON / dict-repr form: `"password": "..."`, `'api_key': '...'`.
_JSON_KV = (
    r"(?P<js_prefix>" + _KEYWORDS + r"[\"']\s*:\s*)"
    r"(?P<js_secret>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s,}]+)"
)
# Case-insensitivity is applied by matching on `text.lower()` with case-sensitive patterns:
# re.IGNORECASE makes these patterns ~10x slower. The IGNORECASE twins are only for the rare text
# whose lower-casing changes its length (a few non-ASCII letters), where spans would not line up.
# Three patterns rather than one alternation: each starts with a literal, which lets the regex
# engine skip ahead instead of trying every alternative at every position.
_PASSES: tuple[tuple[re.Pattern[str], re.Pattern[str], str], ...] = tuple(
    (re.compile(p), re.compile(p, re.IGNORECASE), trigger)
    for p, trigger in ((_URL_USERINFO, "://"), (_KV, "="), (_JSON_KV, ":"))
)
# Substrings without which none of the keyword patterns can match (checked on lower case).
_KEYWORD_HINTS = ("pass", "pwd", "key", "secret", "token")


def _masked(secret: str) -> str:
    """Keep the quoting of a quoted secret so the surrounding text still parses by eye."""
    if len(secret) >= 2 and secret[0] == secret[-1] and secret[0] in "'\"":
        return secret[0] + MASK + secret[0]
    return MASK


def _mask_matches(text: str, fast: re.Pattern[str], slow: re.Pattern[str]) -> str:
    low = text.lower()
    matches = fast.finditer(low) if len(low) == len(text) else slow.finditer(text)
    parts: list[str] = []
    pos = 0
    for m in matches:
        # The secret is each pattern's last group.
        start, end = m.span(m.lastindex or 0)
        parts.append(text[pos:start])
        parts.append(_masked(text[start:end]))
        pos = end
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def _sub_structural(text: str) -> str:
    # Cheap pre-filters: most log values (ids, domains, codes, SMTP replies) cannot match.
    if "=" not in text and ":" not in text:
        return text
    keywords: bool | None = None
    for fast, slow, trigger in _PASSES:
        if trigger not in text:
            continue
        if trigger != "://":
            if keywords is None:
                low = text.lower()
                keywords = any(hint in low for hint in _KEYWORD_HINTS)
            if not keywords:
                continue
        text = _mask_matches(text, fast, slow)
    return text


class Redactor:
    """A compiled redactor for a fixed set of known secret values.

    Compiling the alternation once matters because the log processor calls this for every string
    value of every log line.
    """

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str] = (), *, min_length: int = MIN_SECRET_LENGTH) -> None:
        # `min_length`: the database's URL redactor (ct_actors.db.redact) masks its password's
        # value from 3 characters on, since that one secret is known to be a secret.
        min_length = max(1, min_length)
        variants: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < min_length:
                continue
            # A password shows up raw, %-encoded (inside a DSN) or %-decoded (when we were
            # handed the encoded DSN form); mask every spelling.
            variants.add(secret)
            variants.add(quote(secret, safe=""))
            variants.add(unquote(secret))
        variants = {v for v in variants if len(v) >= min_length}
        # Longest first so that a secret containing another secret is masked whole.
        ordered = sorted(variants, key=len, reverse=True)
        self._pattern: re.Pattern[str] | None = (
            re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return _sub_structural(text)


@functools.lru_cache(maxsize=32)
def _redactor(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secret values and any credential-looking pattern inside arbitrary text.

    Masks: the given secrets (raw and %-encoded), the password of every `scheme://user:pw@`
    URL, and values of `password=`, `passwd=`, `pwd=`, `api_key=`/`apikey=`/`api-key=`,
    `secret=`, `access_token=`, `auth_token=` (any prefix, any case, quoted or not, and the JSON
    form `"password": "..."`).
    """
    return _redactor(tuple(secrets))(text)


def redact_url(url: str) -> str:
    """Mask the password of a URL or libpq DSN, keeping everything else readable.

    `postgresql://ct:s3cr@t@db:5432/ct` -> `postgresql://ct:***@db:5432/ct`;
    `host=db user=ct password='a b'` -> `host=db user=ct password='***'`;
    query-string passwords (`?password=...`) are masked too.
    """
    return _sub_structural(url)
