"""The gate in front of the reply-text patterns (smtp/text_gate.py) never changes an answer:
a text the pattern matches always passes the gate. Proven on the real-reply corpus, on texts
generated from each pattern (hypothesis), and on the parse-tree rules themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ct_actors.smtp.reply import parse_reply
from ct_actors.smtp.reply_texts import TEXT_RE
from ct_actors.smtp.text_gate import GatedPattern, needs_gate, required_words

pytestmark = pytest.mark.timeout(120)

CORPUS_DIR = Path(__file__).parent / "data" / "replies"


def _corpus_texts() -> list[str]:
    texts: list[str] = []
    for path in sorted(CORPUS_DIR.glob("*.yaml")):
        for row in yaml.safe_load(path.read_text(encoding="utf-8")):
            raw = row["reply"]
            raw = "\r\n".join(raw) if isinstance(raw, list) else str(raw)
            texts.append(parse_reply(raw).text.lower())
    return texts


CORPUS = _corpus_texts()


def test_the_corpus_gets_the_same_answers_with_and_without_the_gate() -> None:
    assert len(CORPUS) >= 200
    matched = 0
    for name, gated in TEXT_RE.items():
        for text in CORPUS:
            expected = gated.regex.search(text) is not None
            assert (gated.search(text) is not None) == expected, (name, text)
            matched += expected
    assert matched > 100  # the patterns do fire on the corpus: the gate was really tested


@pytest.mark.parametrize("name", sorted(TEXT_RE))
def test_every_generated_match_passes_the_gate(name: str) -> None:
    gated = TEXT_RE[name]

    @settings(max_examples=100, deadline=None, database=None)
    @given(st.from_regex(gated.regex, fullmatch=False))
    def check(text: str) -> None:
        lowered = text.lower()
        if gated.regex.search(lowered) is not None:
            assert gated.search(lowered) is not None

    check()


def test_the_slow_patterns_are_gated() -> None:
    # The three every rejection is tested against before its own rule (classify.RCPT_RULES).
    for name in ("blocklist", "rate", "about-us"):
        assert TEXT_RE[name].words, name


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (r"spamhaus|blocked\s+using", {"spamhaus", "blocked"}),
        (r"\b(rbl|dnsbl)\b", {"rbl", "dnsbl"}),
        (r"client\s+host\b.{0,100}\bblocked", {"blocked"}),  # the longest word
        (r"sender\s+address\s+rejected", {"sender"}),  # "address", "rejected": everyday words
        (r"(?<!not\s)\blisted\s+(at|on|by)\b", {"listed"}),
        (r"x+yz", {"yz"}),  # a repeat at least once gives its body's words: x, or yz
        (r"(abc)?d", {"d"}),  # an optional group gives none
        (r"abc|\s+", None),  # a branch without words: no gate
        (r"[a-z]+", None),
    ],
)
def test_required_words(pattern: str, words: set[str] | None) -> None:
    found = required_words(pattern)
    assert (None if found is None else set(found)) == words


def test_patterns_re_already_scans_fast_are_not_gated() -> None:
    assert not needs_gate(r"too\s+many\s+recipients")  # a literal prefix
    assert not needs_gate(r"no\s+such|user\s+unknown")  # every branch starts with a character
    assert needs_gate(r"\bspf\b|spamhaus")
    assert GatedPattern(r"too\s+many").words is None
