"""The classifier against a corpus of replies as real servers send them (tests/data/replies/).

Each row names the provider, the stage, the raw reply lines, the meaning the provider's own
documentation gives, the verdict that meaning implies and the source. The corpus is parsed by the
real reply parser, so multi-line replies are exercised exactly as received.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from ct_actors.smtp.classify import (
    RcptVerdict,
    SessionVerdict,
    classify_ehlo,
    classify_greeting,
    classify_mail,
    classify_rcpt,
)
from ct_actors.smtp.reply import parse_reply

CORPUS_DIR = Path(__file__).parent / "data" / "replies"
FIELDS = {"provider", "stage", "reply", "meaning", "expected", "about_us_or_moment", "source"}
OPTIONAL = {"note"}
STAGES = {"greeting", "ehlo", "mail", "rcpt"}
MIN_ROWS = 200
MIN_SCORE = 0.95

_SESSION = {"greeting": classify_greeting, "ehlo": classify_ehlo, "mail": classify_mail}


def _load() -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(CORPUS_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(data, list), f"{path.name}: top level must be a list of rows"
        for i, row in enumerate(data):
            rows.append((f"{path.name}#{i + 1}", row))
    return rows


ROWS = _load()


def _raw(row: dict[str, Any]) -> str:
    reply = row["reply"]
    return "\r\n".join(reply) if isinstance(reply, list) else str(reply)


def _classify(row: dict[str, Any]) -> RcptVerdict | SessionVerdict:
    reply = parse_reply(_raw(row))
    if row["stage"] == "rcpt":
        return classify_rcpt(reply)
    return _SESSION[row["stage"]](reply)


def _verdict_names(stage: str) -> set[str]:
    enum = RcptVerdict if stage == "rcpt" else SessionVerdict
    return {v.name for v in enum}


@pytest.mark.timeout(30)
def test_corpus_schema() -> None:
    assert len(ROWS) >= MIN_ROWS, f"corpus has {len(ROWS)} rows, needs {MIN_ROWS}"
    problems: list[str] = []
    for where, row in ROWS:
        if not isinstance(row, dict):
            problems.append(f"{where}: not a mapping")
            continue
        missing = FIELDS - row.keys()
        extra = row.keys() - FIELDS - OPTIONAL
        if missing or extra:
            problems.append(f"{where}: missing {sorted(missing)} extra {sorted(extra)}")
            continue
        if row["stage"] not in STAGES:
            problems.append(f"{where}: stage {row['stage']!r}")
            continue
        if row["expected"] not in _verdict_names(row["stage"]):
            problems.append(f"{where}: expected {row['expected']!r} is no {row['stage']} verdict")
        if not isinstance(row["about_us_or_moment"], bool):
            problems.append(f"{where}: about_us_or_moment must be a bool")
        for key in ("provider", "meaning", "source"):
            if not (isinstance(row[key], str) and row[key].strip()):
                problems.append(f"{where}: empty {key}")
        reply = row["reply"]
        if isinstance(reply, list):
            if len(reply) < 2 or not all(isinstance(line, str) for line in reply):
                problems.append(f"{where}: a list reply needs two or more lines")
        elif not isinstance(reply, str):
            problems.append(f"{where}: reply must be a string or a list of lines")
        try:
            parse_reply(_raw(row))
        except Exception as exc:  # the row is broken, report which
            problems.append(f"{where}: does not parse: {exc}")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(30)
def test_about_us_or_moment_never_an_address_answer() -> None:
    wrong = []
    for where, row in ROWS:
        if row["stage"] != "rcpt" or not row["about_us_or_moment"]:
            continue
        verdict = _classify(row)
        assert isinstance(verdict, RcptVerdict)
        if verdict.is_address_answer:
            wrong.append(f"{where} [{row['provider']}] {_raw(row)!r} -> {verdict.name}")
    assert not wrong, "about us / our pace / the moment read as an address answer:\n" + "\n".join(
        wrong
    )


@pytest.mark.timeout(30)
def test_corpus_score() -> None:
    per_provider: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses: list[str] = []
    for where, row in ROWS:
        verdict = _classify(row)
        ok = verdict.name == row["expected"]
        tally = per_provider[row["provider"]]
        tally[0] += ok
        tally[1] += 1
        if not ok:
            misses.append(
                f"{where} [{row['provider']}, {row['stage']}] {_raw(row)!r}: "
                f"documented {row['expected']} ({row['meaning']}), got {verdict.name}"
            )
    good = sum(t[0] for t in per_provider.values())
    score = good / len(ROWS)
    for provider, (ok, total) in sorted(per_provider.items()):
        print(f"{provider:55s} {ok:3d}/{total:3d}")
    print(f"overall {good}/{len(ROWS)} = {score:.1%}")
    for miss in misses:
        print("MISS", miss)
    assert score >= MIN_SCORE, f"score {score:.1%} < {MIN_SCORE:.0%}; misclassified:\n" + "\n".join(
        misses
    )
