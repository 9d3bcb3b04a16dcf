"""The simulated world's data model: determinism, mix, serialisation, names, ground truth."""

from __future__ import annotations

import json
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from ct_actors.sim.__main__ import main as sim_main
from ct_actors.sim.world import (
    DEFAULT_MIX,
    NO_MAIL_BEHAVIOURS,
    PERSON_FORMATS,
    REAL_SERVER_MIX,
    SERVER_BEHAVIOURS,
    SHARED_HOSTS,
    Behaviour,
    Expected,
    SimDomain,
    SimHost,
    World,
    candidate_order,
    local_part,
)

PATTERN_BEHAVIOURS = {
    Behaviour.VERIFIABLE,
    Behaviour.SHARED_HOST,
    Behaviour.FIRST_MX_DEAD,
    Behaviour.GREYLIST,
    Behaviour.TARPIT,
    Behaviour.CONN_LIMIT_421,
    Behaviour.RCPT_LIMIT_452,
}


@pytest.fixture(scope="module")
def big_world() -> World:
    return World.generate(2024, 2000)


def test_same_seed_same_world() -> None:
    assert World.generate(7, 300).to_json() == World.generate(7, 300).to_json()
    assert World.generate(7, 300).to_json() != World.generate(8, 300).to_json()


def test_json_round_trip_is_exact(big_world: World) -> None:
    text = big_world.to_json()
    again = World.from_json(text)
    assert again == big_world
    assert again.to_json() == text
    # Derived indexes are rebuilt, not serialised.
    shared = big_world.hosts[SHARED_HOSTS[0]]
    assert again.host_by_ip(shared.ip) == shared
    assert again.served_by(shared.name) == big_world.served_by(shared.name)
    assert [again.expected(d) for d in again.domains] == [
        big_world.expected(d) for d in big_world.domains
    ]


def test_parameters_survive_json() -> None:
    w = World.generate(
        1, 20, latency_ms=5, jitter_ms=1, smtp_port=2600, dns_address="127.0.54.1",
        dns_port=5400, greylist_delay=7.5, tarpit_delay=9, conn_limit=2,
    )  # fmt: skip
    again = World.from_json(w.to_json())
    assert (again.latency_ms, again.jitter_ms, again.smtp_port) == (5, 1, 2600)
    assert (again.dns_address, again.dns_port) == ("127.0.54.1", 5400)
    assert (again.greylist_delay, again.tarpit_delay, again.conn_limit) == (7.5, 9, 2)


@pytest.mark.parametrize("n", [15, 100, 137])
def test_every_behaviour_present(n: int) -> None:
    w = World.generate(n, n)
    assert len(w.domains) == n
    # The real servers' behaviours are opt-in (REAL_SERVER_MIX), not part of the default world.
    assert {d.behaviour for d in w.domains.values()} == set(DEFAULT_MIX)
    assert not SERVER_BEHAVIOURS & set(DEFAULT_MIX)
    real = World.generate(n, max(n, len(REAL_SERVER_MIX)), mix=REAL_SERVER_MIX)
    assert {d.behaviour for d in real.domains.values()} == set(Behaviour)


def test_default_mix_proportions(big_world: World) -> None:
    counts = Counter(d.behaviour for d in big_world.domains.values())
    share = {b: counts[b] / len(big_world.domains) for b in Behaviour}
    assert share[Behaviour.VERIFIABLE] + share[Behaviour.SHARED_HOST] == pytest.approx(
        0.55, abs=0.02
    )
    assert share[Behaviour.CATCHALL] == pytest.approx(0.10, abs=0.01)
    assert sum(share[b] for b in NO_MAIL_BEHAVIOURS) == pytest.approx(0.08, abs=0.01)
    assert sum(DEFAULT_MIX.values()) == pytest.approx(1.0)


def test_custom_mix() -> None:
    w = World.generate(3, 40, mix={Behaviour.VERIFIABLE: 3, Behaviour.CATCHALL: 1})
    counts = Counter(d.behaviour for d in w.domains.values())
    assert counts == {Behaviour.VERIFIABLE: 30, Behaviour.CATCHALL: 10}
    # A tiny weight still shows up once when there is room for every weighted behaviour.
    w = World.generate(3, 20, mix={Behaviour.VERIFIABLE: 1000, Behaviour.TARPIT: 1})
    counts = Counter(d.behaviour for d in w.domains.values())
    assert counts == {Behaviour.VERIFIABLE: 19, Behaviour.TARPIT: 1}


def test_tld_mix_and_names_are_synthetic(big_world: World) -> None:
    tlds = Counter(name.split(".", 1)[1] for name in big_world.domains)
    n = len(big_world.domains)
    assert tlds["com"] / n == pytest.approx(0.40, abs=0.05)
    assert tlds["io"] / n == pytest.approx(0.20, abs=0.05)
    assert tlds["org"] / n == pytest.approx(0.20, abs=0.05)
    assert {"net", "co.uk", "de"} <= set(tlds)
    for name in big_world.domains:
        assert re.fullmatch(r"[a-z]+-[a-z]+-\d{4}\.(com|io|org|net|co\.uk|de)", name), name


def test_hosts_and_addresses(big_world: World) -> None:
    ips = [h.ip for h in big_world.hosts.values()]
    assert len(set(ips)) == len(ips)
    for ip in ips:
        octets = [int(o) for o in ip.split(".")]
        assert octets[0] == 127 and ip != "127.0.0.1" and 1 <= octets[3] <= 254
    assert ips[0] == "127.10.0.1"
    for shared in SHARED_HOSTS[:2]:
        assert len(big_world.served_by(shared)) >= 100
    for d in big_world.by_behaviour(Behaviour.FIRST_MX_DEAD):
        first, second = big_world.mx_hosts(d.name)
        assert not first.listening and second.listening
        assert big_world.serves(second.name, d.name)
    for d in big_world.by_behaviour(Behaviour.NULL_MX):
        assert d.null_mx and not d.has_mx and d.a is not None
    for d in big_world.by_behaviour(Behaviour.NO_MX):
        assert d.mx == () and d.a is not None
    for d in big_world.by_behaviour(Behaviour.NXDOMAIN):
        assert d.mx == () and d.a is None
    conn = big_world.by_behaviour(Behaviour.CONN_LIMIT_421)[0]
    assert big_world.mx_hosts(conn.name)[0].conn_limit == big_world.conn_limit


def test_people_and_mailboxes_are_prober_shaped(big_world: World) -> None:
    for d in big_world.domains.values():
        people = big_world.people(d.name)
        assert 1 <= len(people) <= 3
        for box in d.mailboxes:
            assert re.fullmatch(r"[a-z0-9.]+", box), (d.name, box)
    all_names = {n for d in big_world.domains.values() for p in d.people for n in p}
    assert any(not n.isascii() for n in all_names)
    assert any("-" in n or "'" in n for n in all_names)


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        ("Anne-Marie", "Lefèvre", ["annemarie.lefevre", "annemarielefevre", "a.lefevre",
                                   "annemarie.l", "annemarie", "lefevre"]),
        ("José", "O'Brien", ["jose.obrien", "joseobrien", "j.obrien", "jose.o", "jose", "obrien"]),
        ("Mary Ann", "van Dijk", ["maryann.vandijk", "maryannvandijk", "m.vandijk", "maryann.v",
                                  "maryann", "vandijk"]),
        ("Íñigo", "Núñez", ["inigo.nunez", "inigonunez", "i.nunez", "inigo.n", "inigo", "nunez"]),
        ("Zoë", "Çelik", ["zoe.celik", "zoecelik", "z.celik", "zoe.c", "zoe", "celik"]),
    ],
)  # fmt: skip
def test_local_part(first: str, last: str, expected: list[str]) -> None:
    assert [local_part(fmt, first, last) for fmt in PERSON_FORMATS] == expected


def test_local_part_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        local_part("first_last", "Ann", "Lee")
    with pytest.raises(ValueError):
        local_part("first", "---", "Lee")


def test_candidate_order() -> None:
    people = [("Ann", "Lee"), ("Bo", "Ek"), ("Cy", "Fox"), ("Dee", "Gray")]
    order = candidate_order(people)
    assert len(order) == 3 * 6 + 2  # at most three people
    assert order[:6] == [
        ("ann.lee", "first.last"), ("annlee", "firstlast"), ("a.lee", "f.last"),
        ("ann.l", "first.l"), ("ann", "first"), ("lee", "last"),
    ]  # fmt: skip
    assert order[6] == ("bo.ek", "first.last")
    assert order[-2:] == [("info", "info"), ("contact", "contact")]


def _world(*domains: SimDomain) -> World:
    hosts = {"mx.t.test": SimHost("mx.t.test", "127.10.0.1", Behaviour.VERIFIABLE)}
    return World(seed=0, domains={d.name: d for d in domains}, hosts=hosts)


def _dom(name: str, mailboxes: set[str], behaviour: Behaviour = Behaviour.VERIFIABLE) -> SimDomain:
    mx = () if behaviour in NO_MAIL_BEHAVIOURS else ((10, "mx.t.test"),)
    if behaviour is Behaviour.NULL_MX:
        mx = ((0, "."),)
    people = (("Ann", "Lee"), ("Bo", "Ek"))
    return SimDomain(name, behaviour, mx, None, people, frozenset(mailboxes), (), "127.30.0.1")


def _pass(method: str, confidence: str, *, catchall: bool = False) -> Expected:
    return Expected("PASS", None, method, catchall, Decimal(confidence))


@pytest.mark.parametrize(
    ("mailboxes", "behaviour", "expected"),
    [
        ({"ann.lee", "info"}, Behaviour.VERIFIABLE, _pass("first.last", "0.95")),
        ({"bo.ek"}, Behaviour.VERIFIABLE, _pass("first.last", "0.95")),
        ({"annlee"}, Behaviour.SHARED_HOST, _pass("firstlast", "0.90")),
        ({"b.ek"}, Behaviour.GREYLIST, _pass("f.last", "0.90")),
        ({"ann.l"}, Behaviour.TARPIT, _pass("first.l", "0.90")),
        ({"bo"}, Behaviour.CONN_LIMIT_421, _pass("first", "0.85")),
        ({"lee"}, Behaviour.RCPT_LIMIT_452, _pass("last", "0.85")),
        ({"contact", "info"}, Behaviour.ROLE_ONLY, _pass("info", "0.70")),
        ({"contact"}, Behaviour.FIRST_MX_DEAD, _pass("contact", "0.70")),
        ({"postmaster", "j8x2k"}, Behaviour.NO_PATTERN, Expected("FAIL", "CT-M-NO-PATTERN")),
        ({"postmaster"}, Behaviour.CATCHALL, _pass("first.last", "0.50", catchall=True)),
        ({"ann.lee"}, Behaviour.DROP_MID, Expected("FAIL", "CT-M-SMTP-FAIL")),
        ({"ann.lee"}, Behaviour.BLOCKLIST, Expected("DEFERRED")),
        (set(), Behaviour.NO_MX, Expected("FAIL", "CT-M-NO-MX")),
        (set(), Behaviour.NULL_MX, Expected("FAIL", "CT-M-NO-MX")),
        (set(), Behaviour.NXDOMAIN, Expected("FAIL", "CT-M-NO-MX")),
    ],
)  # fmt: skip
def test_expected_rules(mailboxes: set[str], behaviour: Behaviour, expected: Expected) -> None:
    w = _world(_dom("t-1.com", mailboxes, behaviour))
    assert w.expected("t-1.com") == expected
    assert w.expected("T-1.COM.") == expected
    mx_only = w.expected_mx_only("t-1.com")
    if behaviour in NO_MAIL_BEHAVIOURS:
        assert mx_only == Expected("FAIL", "CT-M-NO-MX")
    else:
        assert mx_only == _pass("first.last", "0.70")


def test_generated_truth_matches_format(big_world: World) -> None:
    for d in big_world.domains.values():
        exp = big_world.expected(d.name)
        if d.behaviour in PATTERN_BEHAVIOURS:
            assert exp.outcome == "PASS" and exp.method_type == d.format, d
        elif d.behaviour is Behaviour.ROLE_ONLY:
            assert exp.method_type == d.roles[0] and exp.confidence == Decimal("0.70")
        elif d.behaviour is Behaviour.NO_PATTERN:
            assert exp == Expected("FAIL", "CT-M-NO-PATTERN")
    outcomes = Counter(big_world.expected(d).outcome for d in big_world.domains)
    assert set(outcomes) == {"PASS", "FAIL", "DEFERRED"}


def test_some_first_people_left(big_world: World) -> None:
    # The generator sometimes drops the first person, so the match comes from a later one.
    left = [
        d
        for d in big_world.by_behaviour(Behaviour.VERIFIABLE)
        if d.format and local_part(d.format, *d.people[0]) not in d.mailboxes
    ]
    assert left


def test_ground_truth_rows_and_truth_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = World.generate(5, 40)
    rows = w.ground_truth_rows()
    assert [r["domain"] for r in rows] == list(w.domains)
    json.dumps(rows)
    path = tmp_path / "world.json"
    path.write_text(w.to_json(), encoding="utf-8")
    assert sim_main(["truth", "--world-file", str(path)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == json.loads(json.dumps(rows))
    assert sim_main(["truth", "--world-file", str(path), "--mx-only"]) == 0
    mx_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["confidence"] for r in mx_rows} == {"0.70", None}


def test_named_mixes_on_the_command_lines() -> None:
    from ct_actors.cli_parser import SIM_MIXES
    from ct_actors.cli_parser import build_parser as cli_parser
    from ct_actors.sim.__main__ import build_parser as sim_parser
    from ct_actors.sim.world import NAMED_MIXES

    assert tuple(NAMED_MIXES) == SIM_MIXES
    base = ["serve", "--seed", "1", "--domains", "5", "--world-file", "w.json"]
    assert sim_parser().parse_args([*base, "--mix", "real"]).mix == REAL_SERVER_MIX
    assert sim_parser().parse_args([*base, "--mix", "default"]).mix == DEFAULT_MIX
    assert sim_parser().parse_args([*base, "--mix", "tls_broken=1"]).mix == {
        Behaviour.TLS_BROKEN: 1.0
    }
    for command in ("demo", "bench"):
        assert cli_parser().parse_args([command, "--mix", "real"]).mix == "real"
        assert cli_parser().parse_args([command]).mix == "default"
    # The real mix is the default one plus small shares of each server behaviour.
    assert {b: REAL_SERVER_MIX[b] for b in DEFAULT_MIX} == DEFAULT_MIX
    extra = {b: w for b, w in REAL_SERVER_MIX.items() if b not in DEFAULT_MIX}
    assert set(extra) == SERVER_BEHAVIOURS
    assert all(0.01 <= w <= 0.03 for w in extra.values())
