"""The pure state machine of one domain's RCPT probing: which address to ask next and what the
answers so far mean. The conversation (`ct_actors.probe.conversation`) asks its questions.

Only address answers (accepted / mailbox rejected) decide anything. Greylisting is handled the
way a patient MTA would: a greylisted address is set aside and the remaining candidates are
asked at once (registering their greylist triplets too), so the whole domain costs a single
greylist wait; after it, `resume()` goes back to the earliest unanswered address. Everything
else the server says — "too many recipients", throttling, a policy block of our IP — is about
the session or about us, and the shell asks the same question again or elsewhere.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from ct_actors.probe.patterns import (
    Candidate,
    SkippedCandidate,
    candidates_and_skips,
    catchall_probe_address,
)


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
    known: dict[int, bool] = field(default_factory=dict)  # step index -> mailbox exists
    greylisted: set[int] = field(default_factory=set)
    # Candidates never asked: not a valid RFC 5321 local part (see patterns.local_part_problem).
    skipped: list[SkippedCandidate] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.catchall_address:
            self.catchall_address = catchall_probe_address(self.domain)
        # The catch-all question comes first: if a random local part is accepted, no other
        # answer from this server can tell us anything about real mailboxes.
        probe = Candidate("catchall-probe", self.catchall_address, None)
        valid, self.skipped = candidates_and_skips(self.domain, self.people)
        self.steps = [probe, *valid]

    @property
    def done(self) -> bool:
        return self.conclusion is not None

    @property
    def waiting_for_greylist(self) -> bool:
        """Every other question is asked; only greylisted ones remain."""
        return not self.done and self.position >= len(self.steps) and bool(self.greylisted)

    def current(self) -> Candidate | None:
        if self.done or self.position >= len(self.steps):
            return None
        return self.steps[self.position]

    def following(self) -> Candidate | None:
        """The question after `current()` should its answer be "no such mailbox"."""
        if self.current() is None:
            return None
        index = self.position + 1
        while index < len(self.steps) and index in self.known:
            index += 1
        return self.steps[index] if index < len(self.steps) else None

    def answer(self, exists: bool) -> None:
        """Record an address answer for `current()` and advance."""
        step = self.current()
        if step is None:
            raise RuntimeError("no question is open")
        self.answers.append((step.address, exists))
        self.known[self.position] = exists
        self.greylisted.discard(self.position)
        self._advance()

    def defer_greylisted(self) -> None:
        """The server greylisted `current()`: ask it again after the greylist delay."""
        if self.current() is None:
            raise RuntimeError("no question is open")
        self.greylisted.add(self.position)
        self.position += 1
        self._advance(from_current=True)

    def resume(self) -> None:
        """After the greylist wait: continue from the earliest unanswered address."""
        if self.greylisted:
            self.position = min(self.greylisted)
            self.greylisted.clear()
            self._advance(from_current=True)

    def restart(self) -> None:
        """Forget all answers: a different MX host must be asked every question again."""
        self.position = 0
        self.conclusion = None
        self.winner = None
        self.answers.clear()
        self.known.clear()
        self.greylisted.clear()

    def _advance(self, *, from_current: bool = False) -> None:
        """Move to the next question, concluding as soon as the answers so far allow."""
        if not from_current:
            self.position += 1
        # Conclude in contract order: the first step whose answer is known-positive decides,
        # but only if every earlier step is answered (none still greylisted).
        for index, step in enumerate(self.steps):
            exists = self.known.get(index)
            if exists is None:
                break
            if exists:
                if index == 0:
                    self.conclusion = Conclusion.CATCHALL
                else:
                    self.conclusion = Conclusion.PATTERN
                    self.winner = step
                return
        else:
            self.conclusion = Conclusion.NO_PATTERN
            return
        # Skip questions already answered (after a resume).
        while self.position < len(self.steps) and self.position in self.known:
            self.position += 1
