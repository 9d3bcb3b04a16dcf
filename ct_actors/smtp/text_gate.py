"""A cheap gate in front of a reply-text pattern: literals one of which every match contains.

The reply-text patterns (`reply_texts`) are long alternations, some with bounded gaps
(`client\\s+host\\b.{0,100}\\bblocked`) and look-behinds. Python's `re` tries every
alternative at every position of the text, so a search that finds nothing, the common case (a
"user unknown" reply is tested against the blocklist, rate and about-us patterns before it
reaches its own rule), costs tens of microseconds per pattern. Every match of such a pattern
contains at least one of a few literal words ("spamhaus", "blocked", "listed", "reputation"
...), and `str.__contains__` finds a word in a short text in well under a microsecond. So the
pattern is searched only when one of its words is there: the same answer, computed from the
pattern itself (the "required factors" that RE2's prefilter uses), never written by hand.

How a pattern's words are found, from `re`'s own parse tree: a run of literal characters in
a sequence must appear in every match of the sequence; any element of a sequence that has
such words gives words for the whole sequence (the most selective is kept); an alternation
needs words in every branch and gives their union; a repetition gives its body's words when
it repeats at least once. Anything else (character classes, anchors, look-arounds, optional
parts) gives no words. A pattern without words is always searched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# re's own parser and opcodes (public module names since 3.11 are re._parser/re._constants;
# the parse tree's shape is covered by tests/test_text_gate.py against every pattern in use).
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_LITERAL = sre_constants.LITERAL
_SUBPATTERN = sre_constants.SUBPATTERN
_BRANCH = sre_constants.BRANCH
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT) + (
    (sre_constants.POSSESSIVE_REPEAT,) if hasattr(sre_constants, "POSSESSIVE_REPEAT") else ()
)

_CHARSET_STARTS = (_LITERAL, sre_constants.IN)
# Words nearly every RCPT rejection contains (RFC 5321's and the stock MTAs' texts: Postfix's
# "Recipient address rejected: User unknown", "mailbox unavailable"): a poor gate, so a
# sequence's other words are preferred ("client" in "client host rejected").
_EVERYDAY = frozenset(
    {"address", "account", "denied", "mail", "mailbox", "message", "recipient", "rejected"}
    | {"unknown", "user"}
)

Words = frozenset[str]


def required_words(pattern: str) -> Words | None:
    """Literals one of which every match of `pattern` contains, or None when there are none
    to be found (then the pattern must always be searched)."""
    tree = sre_parse.parse(pattern)
    if tree.state.flags & re.IGNORECASE:
        return None  # the words would have to be matched case-insensitively too
    return _sequence(list(tree))


def needs_gate(pattern: str) -> bool:
    """Whether `re` searches the pattern slowly: it scans quickly for a literal prefix, or for
    the first characters of an alternation whose branches all begin with one, by itself."""
    tree = list(sre_parse.parse(pattern))
    if not tree:
        return False
    op, arg = tree[0]
    if op is _LITERAL:
        return False
    if op is _BRANCH:
        return not all(branch and branch[0][0] in _CHARSET_STARTS for branch in arg[1])
    return True


def _sequence(items: Iterable[tuple[Any, Any]]) -> Words | None:
    """Words for a sequence: of its elements' words, the most selective (`_selectivity`)."""
    found: list[Words] = []
    run: list[str] = []
    for op, arg in items:
        if op is _LITERAL:
            run.append(chr(arg))
            continue
        if run:
            found.append(frozenset({"".join(run)}))
            run = []
        words = _element(op, arg)
        if words is not None:
            found.append(words)
    if run:
        found.append(frozenset({"".join(run)}))
    return max(found, key=_selectivity, default=None)


def _element(op: Any, arg: Any) -> Words | None:
    if op is _SUBPATTERN:
        _group, add_flags, _del_flags, body = arg
        return None if add_flags & re.IGNORECASE else _sequence(body)
    if op is _BRANCH:
        union: set[str] = set()
        for branch in arg[1]:
            words = _sequence(branch)
            if words is None:
                return None  # this branch can match without any word
            union |= words
        return frozenset(union)
    if op in _REPEATS:
        low, _high, body = arg
        return _sequence(body) if low >= 1 else None
    return None


def _selectivity(words: Words) -> tuple[bool, int, int]:
    """Prefer words that most rejections do not contain, then those whose shortest is longest
    (rarer in a text), then fewer of them."""
    return (not (words & _EVERYDAY), min(len(w) for w in words), -len(words))


class GatedPattern:
    """A compiled pattern searched only when one of its required words is in the text."""

    __slots__ = ("pattern", "regex", "words")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.regex = re.compile(pattern)
        self.words: tuple[str, ...] | None = None
        words = required_words(pattern) if needs_gate(pattern) else None
        if words is not None:
            self.words = tuple(sorted(words))

    def search(self, text: str) -> re.Match[str] | None:
        words = self.words
        if words is not None and not any(word in text for word in words):
            return None
        return self.regex.search(text)
