from decimal import Decimal

import pytest

from ct_actors.probe.patterns import (
    CONFIDENCE,
    candidates,
    candidates_and_skips,
    catchall_probe_address,
    fold_name,
    local_part,
    local_part_problem,
    template,
)
from ct_actors.probe.plan import Conclusion, ProbePlan


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("José", "jose"),
        ("Anne-Marie", "annemarie"),
        ("O'Brien", "obrien"),
        ("Straße", "strasse"),
        ("Øyvind", "oyvind"),
        ("Łukasz", "lukasz"),
        ("  Van der Berg ", "vanderberg"),
        ("李", ""),
    ],
)
def test_fold_name(name: str, folded: str) -> None:
    assert fold_name(name) == folded


def test_local_parts_hyphenated_and_accented() -> None:
    first, last = "Anne-Marie", "Lefèvre"
    assert local_part("first.last", first, last) == "annemarie.lefevre"
    assert local_part("firstlast", first, last) == "annemarielefevre"
    assert local_part("f.last", first, last) == "a.lefevre"
    assert local_part("first.l", first, last) == "annemarie.l"
    assert local_part("first", first, last) == "annemarie"
    assert local_part("last", first, last) == "lefevre"


def test_candidate_order_and_cap() -> None:
    people = [("Ann", "Lee"), ("Bob", "Ray"), ("Cy", "Zu"), ("Dee", "Ox")]
    got = [(c.method_type, c.address, c.person) for c in candidates("acme.com", people)]
    assert got[:6] == [
        ("first.last", "ann.lee@acme.com", 0),
        ("firstlast", "annlee@acme.com", 0),
        ("f.last", "a.lee@acme.com", 0),
        ("first.l", "ann.l@acme.com", 0),
        ("first", "ann@acme.com", 0),
        ("last", "lee@acme.com", 0),
    ]
    assert len(got) == 3 * 6 + 2  # the fourth person is ignored
    assert got[-2:] == [("info", "info@acme.com", None), ("contact", "contact@acme.com", None)]


def test_duplicates_removed_and_unusable_names_skipped() -> None:
    got = [c.address for c in candidates("x.io", [("Lee", "Lee"), ("李", "王")])]
    assert got == [
        "lee.lee@x.io",
        "leelee@x.io",
        "l.lee@x.io",
        "lee.l@x.io",
        "lee@x.io",
        "info@x.io",
        "contact@x.io",
    ]


def test_roles_only_without_people() -> None:
    assert [c.method_type for c in candidates("x.io", [])] == ["info", "contact"]


def test_confidence_table() -> None:
    assert CONFIDENCE["first.last"] == Decimal("0.95")
    assert {CONFIDENCE[m] for m in ("firstlast", "f.last", "first.l")} == {Decimal("0.90")}
    assert {CONFIDENCE[m] for m in ("first", "last")} == {Decimal("0.85")}
    assert {CONFIDENCE[m] for m in ("info", "contact")} == {Decimal("0.70")}


def test_template_is_never_a_person() -> None:
    assert template("f.last", "acme.com") == "{f}.{last}@acme.com"
    assert template("info", "acme.com") == "info@acme.com"


def test_catchall_probe_addresses_are_random() -> None:
    a, b = catchall_probe_address("x.io"), catchall_probe_address("x.io")
    assert a != b and a.startswith("ct-probe-") and a.endswith("@x.io")


def test_plan_catchall() -> None:
    plan = ProbePlan("x.io", [("Ann", "Lee")], catchall_address="zz@x.io")
    assert plan.current() is not None and plan.current().address == "zz@x.io"  # type: ignore[union-attr]
    plan.answer(True)
    assert plan.conclusion is Conclusion.CATCHALL and plan.current() is None


def test_plan_pattern_and_no_pattern() -> None:
    plan = ProbePlan("x.io", [("Ann", "Lee")], catchall_address="zz@x.io")
    for _ in range(3):
        plan.answer(False)
    assert not plan.done
    plan.answer(True)  # f.last accepted (catch-all probe, first.last, firstlast rejected)
    assert plan.conclusion is Conclusion.PATTERN
    assert plan.winner is not None and plan.winner.method_type == "f.last"
    plan.restart()
    while not plan.done:
        plan.answer(False)
    assert plan.conclusion is Conclusion.NO_PATTERN
    assert len(plan.answers) == 1 + 6 + 2


def test_plan_greylisting_costs_one_wait() -> None:
    plan = ProbePlan("x.io", [("Ann", "Lee")], catchall_address="zz@x.io")
    plan.defer_greylisted()  # catch-all probe greylisted
    plan.answer(False)  # first.last rejected
    plan.defer_greylisted()  # firstlast greylisted
    plan.answer(True)  # f.last accepted, but firstlast is still unknown: no conclusion yet
    assert not plan.done
    while plan.current() is not None:
        plan.answer(False)
    assert plan.waiting_for_greylist and plan.greylisted == {0, 2}
    plan.resume()
    assert plan.current() is not None and plan.current().address == "zz@x.io"  # type: ignore[union-attr]
    plan.answer(False)
    assert plan.current() is not None and plan.current().method_type == "firstlast"  # type: ignore[union-attr]
    plan.answer(False)
    # firstlast rejected: f.last, answered before the wait, now decides.
    assert plan.conclusion is Conclusion.PATTERN
    assert plan.winner is not None and plan.winner.method_type == "f.last"


def test_plan_earlier_accept_wins_after_resume() -> None:
    plan = ProbePlan("x.io", [("Ann", "Lee")], catchall_address="zz@x.io")
    plan.answer(False)
    plan.defer_greylisted()  # first.last greylisted
    plan.answer(True)  # firstlast accepted
    assert not plan.done
    while plan.current() is not None:
        plan.answer(False)
    plan.resume()
    plan.answer(True)  # first.last accepted on retry: it comes first in the contract order
    assert plan.winner is not None and plan.winner.method_type == "first.last"


# ─── RFC 5321 local parts (issue 10, item 7) ────────────────────────────────────────────────
# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets; §4.1.2: Local-part = Dot-string /
# Quoted-string, Dot-string = Atom *("." Atom), Atom = 1*atext (RFC 5322 §3.2.3). A 10 kB
# sample name used to be sent whole and the server refused the RCPT line ("command longer than
# 512 octets", §4.5.3.1.4), failing a healthy domain.


@pytest.mark.parametrize(
    ("local", "problem"),
    [
        ("first.last", None),
        ("a" * 64, None),
        ("o'brien+x", None),
        ("a" * 65, "local part longer than 64 octets (65)"),
        ("", "empty local part"),
        (".abc", "empty atom in dot-string"),
        ("abc.", "empty atom in dot-string"),
        ("a..b", "empty atom in dot-string"),
        ("a b", "character ' ' not allowed in a dot-string local part"),
        ("a\x00b", "character '\\x00' not allowed in a dot-string local part"),
        ("jos\u00e9", "character 'é' not allowed in a dot-string local part"),
        ("a<b>", "character '<' not allowed in a dot-string local part"),
    ],
)
def test_local_part_problem(local: str, problem: str | None) -> None:
    assert local_part_problem(local) == problem


def test_overlong_names_are_skipped_and_recorded_never_sent() -> None:
    huge = "x" * 10_000
    got, skipped = candidates_and_skips("acme.com", [("Ann", huge), ("Bob", "Lee")])
    addresses = [c.address for c in got]
    # For person 0 only the patterns that do not use the whole last name survive.
    assert addresses[:2] == ["ann.x@acme.com", "ann@acme.com"]
    assert all(len(a.split("@")[0]) <= 64 for a in addresses)
    assert "bob.lee@acme.com" in addresses and "info@acme.com" in addresses
    assert [(s.method_type, s.person) for s in skipped] == [
        ("first.last", 0),
        ("firstlast", 0),
        ("f.last", 0),
        ("last", 0),
    ]
    for s in skipped:
        assert s.reason.startswith("local part longer than 64 octets")
        assert len(s.local_part) <= 68  # a bounded prefix, never the 10 kB name
    assert skipped[0].audit() == {
        "method_type": "first.last",
        "person": 0,
        "reason": skipped[0].reason,
        "local_part": skipped[0].local_part,
    }
    # The plan asks only valid candidates and keeps the skipped ones for the evidence.
    plan = ProbePlan("acme.com", [("Ann", huge), ("Bob", "Lee")], catchall_address="c@acme.com")
    assert [s.address for s in plan.steps[1:]] == addresses
    assert plan.skipped == skipped
    assert candidates("acme.com", [("Ann", huge)]) == got[:2] + got[-2:]
