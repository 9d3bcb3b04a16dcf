"""The RCPT conversation's decisions without a session: `Conversation` is driven here with
replies made up on the spot, no sockets and no clock (the shell, actors/smtp_session.converse,
has its own tests through scripted servers in test_conversation_pipelining.py)."""

from __future__ import annotations

import pytest

from ct_actors.probe.conversation import Command, Conversation, Verb
from ct_actors.probe.plan import ProbePlan
from ct_actors.probe.visit import VisitOutcome
from ct_actors.smtp.reply import parse_reply
from ct_actors.smtp.types import Reply

pytestmark = pytest.mark.timeout(10)

SENDER = "bounce@probe.example.net"
CATCHALL = "ct-probe-0000@acme.example"
ANN = "ann.lee@acme.example"  # the first candidate: first.last of the first sample person
OK = parse_reply("250 2.1.0 Ok\r\n")
UNKNOWN = parse_reply("550 5.1.1 User unknown\r\n")
TOO_MANY = parse_reply("452 4.5.3 Too many recipients\r\n")


def plan() -> ProbePlan:
    return ProbePlan("acme.example", [("Ann", "Lee")], catchall_address=CATCHALL)


def mail() -> Command:
    return Command(Verb.MAIL, SENDER)


def rcpt(address: str) -> Command:
    return Command(Verb.RCPT, address)


class Budget:
    """A rejected-RCPT budget with `room` reservations; records what was settled."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.settled: list[bool] = []

    def reserve(self) -> float | None:
        if self.room == 0:
            return None
        self.room -= 1
        return 0.0

    def settle(self, token: float, rejected: bool) -> None:
        self.settled.append(rejected)


def test_mail_travels_with_the_first_rcpt_only_where_pipelining_is_offered() -> None:
    lockstep = Conversation(plan(), mail_from=SENDER, rcpt_limit=10)
    assert lockstep.next_commands() == (mail(),)
    lockstep.receive([OK])
    assert lockstep.next_commands() == (rcpt(CATCHALL),)
    pipelined = Conversation(plan(), mail_from=SENDER, rcpt_limit=10, pipelining=True)
    # With the catch-all probe the first candidate goes too: it can never cost a needless
    # rejection (a catch-all accepts it; a refused probe is followed by exactly this question).
    assert pipelined.next_commands() == (mail(), rcpt(CATCHALL), rcpt(ANN))


def test_a_catchall_concludes_on_the_first_answer() -> None:
    budget = Budget(room=5)
    conversation = Conversation(
        plan(), mail_from=SENDER, rcpt_limit=10, pipelining=True, rejections=budget
    )
    conversation.next_commands()
    conversation.receive([OK, OK, OK])
    assert conversation.next_commands() == ()
    result = conversation.result
    assert (result.outcome, result.progress, result.rcpts_sent) == (VisitOutcome.CONCLUDED, 1, 2)
    assert result.errors == 0 and budget.settled == [False, False]
    assert conversation.plan.conclusion is not None
    assert result.replies[-1] == f"RCPT {ANN} -> 250 2.1.0 Ok (not needed: not an answer)"


def test_a_refused_catchall_probe_is_followed_by_the_answer_already_asked() -> None:
    conversation = Conversation(plan(), mail_from=SENDER, rcpt_limit=10, pipelining=True)
    conversation.next_commands()
    conversation.receive([OK, UNKNOWN, OK])  # one round trip: not a catch-all, ann.lee exists
    assert conversation.next_commands() == ()
    assert conversation.plan.winner is not None and conversation.plan.winner.address == ANN
    assert (conversation.result.progress, conversation.result.errors) == (2, 1)


def test_later_questions_go_one_at_a_time() -> None:
    # An accepted candidate must never be followed by a needless rejection.
    conversation = Conversation(plan(), mail_from=SENDER, rcpt_limit=10, pipelining=True)
    conversation.next_commands()
    conversation.receive([OK, UNKNOWN, UNKNOWN])
    assert conversation.next_commands() == (rcpt("annlee@acme.example"),)


def test_the_batch_fits_the_error_budget_even_if_all_of_it_is_refused() -> None:
    for budget, expected in (
        (1, (mail(),)),
        (2, (mail(), rcpt(CATCHALL))),
        (3, (mail(), rcpt(CATCHALL), rcpt(ANN))),
    ):
        conversation = Conversation(
            plan(), mail_from=SENDER, rcpt_limit=10, error_budget=budget, pipelining=True
        )
        assert conversation.next_commands() == expected


def test_a_refused_mail_makes_every_pipelined_rcpt_no_answer() -> None:
    budget = Budget(room=5)
    conversation = Conversation(
        plan(), mail_from=SENDER, rcpt_limit=10, pipelining=True, rejections=budget
    )
    conversation.next_commands()
    refused = parse_reply("553 5.7.1 Sender address rejected\r\n")
    need_mail = parse_reply("503 5.5.1 Error: need MAIL command\r\n")
    conversation.receive([refused, need_mail, need_mail])
    result = conversation.result
    assert result.outcome is not VisitOutcome.CONCLUDED and conversation.over
    assert conversation.plan.answers == [] and result.errors == 3
    assert budget.settled == [True, True]
    assert result.replies[1].endswith("(no transaction: not an answer)")


def test_a_reused_session_sends_its_rset_with_the_first_transaction() -> None:
    conversation = Conversation(
        plan(), mail_from=SENDER, rcpt_limit=10, pipelining=True, reset_first=True
    )
    assert conversation.next_commands() == (
        Command(Verb.RSET), mail(), rcpt(CATCHALL), rcpt(ANN),
    )  # fmt: skip
    conversation.receive([OK, OK, UNKNOWN, OK])
    assert conversation.next_commands() == ()
    assert conversation.plan.winner is not None and not conversation.result.reset_failed
    lockstep = Conversation(plan(), mail_from=SENDER, rcpt_limit=10, reset_first=True)
    assert lockstep.next_commands() == (Command(Verb.RSET),)
    lockstep.receive([OK])
    assert lockstep.next_commands() == (mail(),)


def test_a_refused_opening_rset_means_the_session_was_over_before_the_domain() -> None:
    budget = Budget(room=5)
    conversation = Conversation(
        plan(),
        mail_from=SENDER,
        rcpt_limit=10,
        pipelining=True,
        rejections=budget,
        reset_first=True,
    )
    conversation.next_commands()
    # Stock Postfix after its hard error limit: 421 to the next command, then it closes.
    conversation.receive([parse_reply("421 4.7.0 mx.acme.example Error: too many errors\r\n")])
    result = conversation.result
    assert result.reset_failed and result.outcome is VisitOutcome.SESSION_ENDED
    assert result.error_limit_after == 0 and conversation.plan.answers == []
    assert budget.settled == [False, False] and conversation.next_commands() == ()


def test_a_452_teaches_the_recipient_limit_and_asks_again_after_rset() -> None:
    conversation = Conversation(plan(), mail_from=SENDER, rcpt_limit=10, pipelining=True)
    assert conversation.next_commands() == (mail(), rcpt(CATCHALL), rcpt(ANN))
    # Not a catch-all; the server takes one recipient per transaction.
    conversation.receive([OK, UNKNOWN, TOO_MANY])
    assert conversation.result.rcpt_limit == 1
    assert conversation.next_commands() == (Command(Verb.RSET),)
    conversation.receive([OK])
    assert conversation.next_commands() == (mail(), rcpt(ANN))  # the same question again


def test_the_error_budget_ends_the_session_not_the_domain() -> None:
    conversation = Conversation(plan(), mail_from=SENDER, rcpt_limit=10, error_budget=1)
    conversation.next_commands()
    conversation.receive([OK])
    conversation.next_commands()
    conversation.receive([UNKNOWN])
    assert conversation.next_commands() == ()
    result = conversation.result
    assert result.outcome is VisitOutcome.SESSION_ENDED and result.budget_spent
    assert conversation.plan.current() is not None  # the next question waits for a new session


def test_a_421_about_our_pace_ends_the_session() -> None:
    conversation = Conversation(plan(), mail_from=SENDER, rcpt_limit=10)
    conversation.next_commands()
    conversation.receive([parse_reply("421 4.7.0 Too many connections, slow down\r\n")])
    result = conversation.result
    assert (result.outcome, result.pace) == (VisitOutcome.SESSION_ENDED, True)
    assert conversation.over and conversation.next_commands() == ()


def test_reservations_are_settled_once_whatever_happens() -> None:
    budget = Budget(room=1)
    conversation = Conversation(plan(), mail_from=SENDER, rcpt_limit=10, rejections=budget)
    conversation.next_commands()
    conversation.receive([OK])
    conversation.next_commands()
    conversation.receive([UNKNOWN])
    # No room for the next RCPT: the visit pauses for the host's budget.
    assert conversation.next_commands() == ()
    assert conversation.result.dha_paused and budget.settled == [True]
    broken = Budget(room=5)
    conversation = Conversation(plan(), mail_from=SENDER, rcpt_limit=10, rejections=broken)
    conversation.next_commands()
    conversation.abandon()  # the session broke off before MAIL's reply
    assert broken.settled == [False] and conversation.next_commands() == ()


def test_replies_must_answer_the_commands_sent() -> None:
    conversation = Conversation(plan(), mail_from=SENDER, rcpt_limit=10)
    with pytest.raises(RuntimeError):
        conversation.receive([OK])
    conversation.next_commands()
    with pytest.raises(RuntimeError):
        conversation.next_commands()
    no_replies: list[Reply] = []
    with pytest.raises(RuntimeError):
        conversation.receive(no_replies)
