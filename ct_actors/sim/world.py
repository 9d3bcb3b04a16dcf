"""The simulated internet's facts: the `World` (domains, their MX hosts, mailboxes), its lookups,
its ground truth and its JSON form. Its data types live in `world_types`, its generation from a
seed in `world_generator`; both are re-exported here.

Pure and synchronous on purpose: the DNS server, the SMTP server, the in-memory fakes and the
test assertions all read the same tables, and a separate process can serve the very same world
from its JSON form. `expected()` re-implements the prober's contract independently, so a
prober bug shows up as a disagreement instead of being copied into the oracle.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ct_actors.sim.behaviours import (
    DEFAULT_DHA_LIMITS,
    POSTFIX_ERROR_LIMITS,
    POSTGREY_DELAY,
    STRICT_ERROR_LIMITS,
    DhaLimits,
    ErrorLimits,
)
from ct_actors.sim.world_file import (
    JSON_VERSION,
    WorldHeader,
    behaviour_histogram,
    parse_world_lines,
    world_lines,
    write_world_file,
)
from ct_actors.sim.world_generator import (
    DEFAULT_MIX,
    NAMED_MIXES,
    REAL_SERVER_MIX,
    NetworkParams,
    generate_network,
)
from ct_actors.sim.world_types import (
    CATCHALL_CONFIDENCE,
    CONFIDENCE,
    MAX_PEOPLE,
    MX_ONLY_CONFIDENCE,
    NO_MAIL_BEHAVIOURS,
    NULL_MX_HOST,
    PERSON_FORMATS,
    ROLES,
    SERVER_BEHAVIOURS,
    SHARED_HOSTS,
    SIM_NETWORK,
    Behaviour,
    Expected,
    ExpectedOutcome,
    SimDomain,
    SimHost,
    candidate_order,
    fold_name,
    local_part,
)

# The world's types and mixes, re-exported: `ct_actors.sim.world` is where tests and the
# simulator have always imported them from.
__all__ = [
    "CATCHALL_CONFIDENCE",
    "CONFIDENCE",
    "DEFAULT_MIX",
    "JSON_VERSION",
    "MAX_PEOPLE",
    "MX_ONLY_CONFIDENCE",
    "NAMED_MIXES",
    "NO_MAIL_BEHAVIOURS",
    "NULL_MX_HOST",
    "PERSON_FORMATS",
    "REAL_SERVER_MIX",
    "ROLES",
    "SERVER_BEHAVIOURS",
    "SHARED_HOSTS",
    "SIM_NETWORK",
    "Behaviour",
    "Expected",
    "ExpectedOutcome",
    "SimDomain",
    "SimHost",
    "World",
    "WorldHeader",
    "candidate_order",
    "expected_for",
    "fold_name",
    "local_part",
]


_FAIL_NO_MX = Expected("FAIL", "CT-M-NO-MX")


@dataclass(eq=True)
class World:
    seed: int
    domains: dict[str, SimDomain]
    hosts: dict[str, SimHost]
    latency_ms: float = 50.0
    jitter_ms: float = 25.0
    smtp_port: int = 2525
    dns_address: str = "127.0.53.53"
    dns_port: int = 5353
    greylist_delay: float = 2.0
    tarpit_delay: float = 3.0
    conn_limit: int = 4
    _by_ip: dict[str, SimHost] = field(init=False, repr=False, compare=False)
    _served: dict[str, set[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_ip = {h.ip: h for h in self.hosts.values()}
        self._served = {name: set() for name in self.hosts}
        for d in self.domains.values():
            for _, host in d.mx:
                if host in self._served:
                    self._served[host].add(d.name)

    # -- generation -------------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        seed: int,
        n_domains: int,
        *,
        mix: Mapping[Behaviour, float] | None = None,
        latency_ms: float = 50.0,
        jitter_ms: float = 25.0,
        smtp_port: int = 2525,
        dns_address: str = "127.0.53.53",
        dns_port: int = 5353,
        greylist_delay: float = 2.0,
        tarpit_delay: float = 3.0,
        conn_limit: int = 4,
        blocklist_hosts: int = 1,
        error_limits: ErrorLimits = POSTFIX_ERROR_LIMITS,
        strict_error_limits: ErrorLimits = STRICT_ERROR_LIMITS,
        dha_limits: DhaLimits = DEFAULT_DHA_LIMITS,
        greylist_300_delay: float = POSTGREY_DELAY,
    ) -> World:
        """`blocklist_hosts`: how many distinct MX hosts the BLOCKLIST domains spread over.
        One by default — a provider that checks Spamhaus, which is what a prober on a clean IP
        meets; several is what it looks like when our own IP is listed (the kill switch's
        scenario).

        `error_limits`/`strict_error_limits`/`dha_limits`/`greylist_300_delay` parametrise the
        ERROR_LIMIT, ERROR_LIMIT_STRICT, DHA_BLOCK and GREYLIST_300 hosts; they travel in the
        hosts' JSON, so a world served from its file behaves the same."""
        params = NetworkParams(
            mix=mix,
            greylist_delay=greylist_delay,
            tarpit_delay=tarpit_delay,
            conn_limit=conn_limit,
            blocklist_hosts=blocklist_hosts,
            error_limits=error_limits,
            strict_error_limits=strict_error_limits,
            dha_limits=dha_limits,
            greylist_300_delay=greylist_300_delay,
        )
        domains, hosts = generate_network(seed, n_domains, params)
        # float() so that 50 and 50.0 give the same JSON: the world file is compared byte-wise.
        return cls(
            seed=seed,
            domains=domains,
            hosts=hosts,
            latency_ms=float(latency_ms),
            jitter_ms=float(jitter_ms),
            smtp_port=smtp_port,
            dns_address=dns_address,
            dns_port=dns_port,
            greylist_delay=float(greylist_delay),
            tarpit_delay=float(tarpit_delay),
            conn_limit=conn_limit,
        )

    # -- lookups ----------------------------------------------------------------------------

    def domain(self, name: str) -> SimDomain:
        return self.domains[name.lower().rstrip(".")]

    def people(self, domain: str) -> list[tuple[str, str]]:
        return list(self.domain(domain).people)

    def by_behaviour(self, behaviour: Behaviour) -> list[SimDomain]:
        return [d for d in self.domains.values() if d.behaviour is behaviour]

    def host_by_ip(self, ip: str) -> SimHost | None:
        return self._by_ip.get(ip)

    def mx_hosts(self, domain: str) -> list[SimHost]:
        """The domain's MX hosts in preference order (ties by name)."""
        return [self.hosts[h] for _, h in sorted(self.domain(domain).mx) if h in self.hosts]

    def live_hosts(self) -> list[SimHost]:
        return [h for h in self.hosts.values() if h.listening]

    def served_by(self, host: str) -> frozenset[str]:
        return frozenset(self._served.get(host, ()))

    def serves(self, host: str, domain: str) -> bool:
        return domain in self._served.get(host, ())

    def accepts(self, domain: str, local: str) -> bool:
        """Whether RCPT TO:<local@domain> names an existing mailbox (catch-alls take all)."""
        d = self.domains.get(domain.lower())
        if d is None:
            return False
        return d.is_catchall or local.lower() in d.mailboxes

    # -- ground truth -----------------------------------------------------------------------

    def expected(self, domain: str) -> Expected:
        return expected_for(self.domain(domain))

    def expected_mx_only(self, domain: str) -> Expected:
        return expected_for(self.domain(domain), mx_only=True)

    def ground_truth_rows(self, *, mx_only: bool = False) -> list[dict[str, Any]]:
        return [ground_truth_row(d, mx_only=mx_only) for d in self.domains.values()]

    # -- serialisation ----------------------------------------------------------------------

    def header(self) -> WorldHeader:
        return WorldHeader(
            seed=self.seed,
            latency_ms=self.latency_ms,
            jitter_ms=self.jitter_ms,
            smtp_port=self.smtp_port,
            dns_address=self.dns_address,
            dns_port=self.dns_port,
            greylist_delay=self.greylist_delay,
            tarpit_delay=self.tarpit_delay,
            conn_limit=self.conn_limit,
            domains=len(self.domains),
            behaviours=behaviour_histogram(self.domains.values()),
        )

    def lines(self) -> Iterator[str]:
        """The world file's lines (`ct_actors.sim.world_file`): header, hosts, domains."""
        return world_lines(self.header(), self.hosts.values(), self.domains.values())

    def write_file(self, path: Path) -> None:
        write_world_file(path, self.lines())

    def to_json(self) -> str:
        return "".join(self.lines())

    @classmethod
    def from_json(cls, text: str) -> World:
        return cls.from_lines(text.splitlines())

    @classmethod
    def read_file(cls, path: Path) -> World:
        with path.open(encoding="utf-8") as lines:
            return cls.from_lines(lines)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> World:
        header, hosts, domains = parse_world_lines(lines)
        return cls(
            seed=header.seed,
            domains={d.name: d for d in domains},
            hosts={h.name: h for h in hosts},
            latency_ms=header.latency_ms,
            jitter_ms=header.jitter_ms,
            smtp_port=header.smtp_port,
            dns_address=header.dns_address,
            dns_port=header.dns_port,
            greylist_delay=header.greylist_delay,
            tarpit_delay=header.tarpit_delay,
            conn_limit=header.conn_limit,
        )


def expected_for(d: SimDomain, *, mx_only: bool = False) -> Expected:
    """The outcome a correct prober reaches for `d` (in MX-only mode with `mx_only`)."""
    if mx_only:
        if d.has_mx:
            return Expected("PASS", None, "first.last", False, MX_ONLY_CONFIDENCE)
        return _FAIL_NO_MX
    if d.behaviour in NO_MAIL_BEHAVIOURS:
        return _FAIL_NO_MX
    if d.behaviour is Behaviour.DROP_MID:
        return Expected("FAIL", "CT-M-SMTP-FAIL")
    if d.behaviour is Behaviour.GREET_421:
        # Every MX host refuses every connection: after its bounded retries the prober must
        # conclude that the domain's SMTP service fails (not defer it forever).
        return Expected("FAIL", "CT-M-SMTP-FAIL")
    if d.behaviour is Behaviour.BLOCKLIST:
        return Expected("DEFERRED")
    # The other server behaviours (error limits, DHA, postgrey, broken TLS, reply zoo) hide
    # nothing from a polite prober: the domain's own truth stands.
    if d.is_catchall:
        return Expected("PASS", None, "first.last", True, CATCHALL_CONFIDENCE)
    for local, method in candidate_order(d.people):
        if local in d.mailboxes:
            return Expected("PASS", None, method, False, CONFIDENCE[method])
    return Expected("FAIL", "CT-M-NO-PATTERN")


def ground_truth_row(d: SimDomain, *, mx_only: bool = False) -> dict[str, Any]:
    """One line of `python -m ct_actors.sim truth`."""
    return {
        "domain": d.name,
        "behaviour": str(d.behaviour),
        **expected_for(d, mx_only=mx_only).to_dict(),
        "format": d.format,
        "mx": [host for _, host in sorted(d.mx)],
        "people": [list(p) for p in d.people],
    }
