"""The input stage, one for the daemon (dispatcher), `once` and `probe`: a spine record's raw
domain becomes the domain to probe (`normalise_domain`), or the record's answer at once,
CT-I-NO-DOMAIN, when it cannot be one without guessing."""

from __future__ import annotations

from dataclasses import dataclass

from ct_actors.outcome import Failed, FailureCode
from ct_actors.probe.normalise import NormalisedDomain, UnusableDomain, normalise_domain


@dataclass(frozen=True, slots=True)
class Unusable:
    raw: str | None
    reason: str

    def failed(self) -> Failed:
        return Failed(
            FailureCode.NO_DOMAIN,
            f"domain {self.raw!r} unusable: {self.reason}",
            evidence={"raw_domain": self.raw},
        )


def accept(raw: str | None) -> NormalisedDomain | Unusable:
    try:
        return normalise_domain(raw)
    except UnusableDomain as exc:
        return Unusable(exc.raw, exc.reason)


def input_evidence(raw: str | None, domain: NormalisedDomain) -> dict[str, object]:
    """What an outcome row says about its input: the raw value and what was normalised, and
    look-alike suspects (UTS #39), probed like any domain but flagged for a human."""
    evidence: dict[str, object] = {"raw_domain": raw, "normalised": list(domain.changes)}
    if domain.mixed_script:
        evidence["mixed_script_labels"] = list(domain.mixed_script)
    return evidence
