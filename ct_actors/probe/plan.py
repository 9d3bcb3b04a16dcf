"""The pure state machine of one domain's RCPT probing: which address to ask next and what the
answers so far mean. The async shell (`ct_actors.probe.conversation`) only moves bytes.

Only address answers (accepted / mailbox rejected) advance the plan. Everything else the server
says — greylisting, "too many recipients", throttling, a policy block of our IP — is about the
session or about us, so the shell handles it and asks the same question again or elsewhere.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from ct_actors.probe.patterns import Candidate, candidates, catchall_probe_address


class Conclusion(enum.StrEnum):
    CATCHALL = "catchall"
    PATTERN = "pattern"
    NO_PATTERN = "no-pattern"


@dataclass(slots=True)
class ProbePlan:
    domain: str
    people: Sequence[tuple[str, str]] = ()
    catchall_address: str = ""
    steps: list[Candidate] = field(default_factory=list)
    position: int = 0
    conclusion: Conclusion | None = None
    winner: Candidate | None = None
    answers: list[tuple[str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.catchall_address:
            self.catchall_address = catchall_probe_address(self.domain)
        # The catch-all question comes first: if a random local part is accepted, no other
        # answer from this server can tell us anything about real mailboxes.
        probe = Candidate("catchall-probe", self.catchall_address, None)
        self.steps = [probe, *candidates(self.domain, self.people)]

    @property
    def done(self) -> bool:
        return self.conclusion is not None

    def current(self) -> Candidate | None:
        if self.done:
            return None
        return self.steps[self.position]

    def answer(self, accepted: bool) -> None:
        """Record an address answer for `current()` and advance."""
        step = self.current()
        if step is None:
            raise RuntimeError("plan already concluded")
        self.answers.append((step.address, accepted))
        if self.position == 0:
            if accepted:
                self.conclusion = Conclusion.CATCHALL
                return
        elif accepted:
            self.conclusion = Conclusion.PATTERN
            self.winner = step
            return
        self.position += 1
        if self.position >= len(self.steps):
            self.conclusion = Conclusion.NO_PATTERN

    def restart(self) -> None:
        """Forget all answers: a different MX host must be asked every question again."""
        self.position = 0
        self.conclusion = None
        self.winner = None
        self.answers.clear()
