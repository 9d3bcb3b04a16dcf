"""The RCPT conversation with ESMTP PIPELINING (RFC 2920): MAIL FROM travels with the first RCPT
of each transaction where the server offers it (with the catch-all probe, also with the first
candidate), and a reused session's RSET with them. The scripted servers read every command of a
group before they answer, so a client that waited for a reply in between would stall until its
timeout."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from ct_actors.actors.smtp_session import run_conversation
from ct_actors.probe.conversation import Conversation, ConversationResult
from ct_actors.probe.plan import ProbePlan
from ct_actors.probe.visit import VisitOutcome
from ct_actors.smtp.client import SmtpSession, connect_session
from ct_actors.testing import Expect, ScriptedConnector, Sleep, Step, closing, opening, reply

pytestmark = pytest.mark.timeout(30)

SENDER = "bounce@probe.example.net"
CATCHALL = "ct-probe-0000@acme.example"
ANN = "ann.lee@acme.example"


def plan() -> ProbePlan:
    return ProbePlan("acme.example", [("Ann", "Lee")], catchall_address=CATCHALL)


async def converse(
    session: SmtpSession, probe: ProbePlan, **options: object
) -> ConversationResult:
    """The pool's way: a Conversation for the session, run by the shell."""
    conversation = Conversation(probe, pipelining=session.pipelining, **options)  # type: ignore[arg-type]
    return await run_conversation(session, conversation)


async def session_for(nursery: trio.Nursery, script: Sequence[Step]) -> SmtpSession:
    return await connect_session(
        ScriptedConnector(nursery, script),
        "192.0.2.25",
        25,
        helo_name="probe.example.net",
        connect_timeout=10.0,
        command_timeout=30.0,
    )


async def test_mail_from_travels_with_the_catchall_probe_and_the_first_candidate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(),
        Expect(f"MAIL FROM:<{SENDER}>"),
        Expect(f"RCPT TO:<{CATCHALL}>"),
        Expect(f"RCPT TO:<{ANN}>"),
        Sleep(0.1),
        reply(250, "2.1.0 Ok"),
        reply(550, "5.1.1 User unknown"),
        reply(250, "2.1.5 Ok"),
        *closing(),
    ]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            session = await session_for(nursery, script)
            probe = plan()
            result = await converse(session, probe, mail_from=SENDER, rcpt_limit=10)
            assert trio.current_time() == pytest.approx(0.1)  # one round trip
            await session.aclose()
    assert result.outcome is VisitOutcome.CONCLUDED
    assert probe.winner is not None and probe.winner.method_type == "first.last"
    assert (result.rcpts_sent, result.errors) == (2, 1)


async def test_a_reused_session_sends_rset_with_the_first_transaction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(),
        Expect("RSET"),
        Expect(f"MAIL FROM:<{SENDER}>"),
        Expect(f"RCPT TO:<{CATCHALL}>"),
        Expect(f"RCPT TO:<{ANN}>"),
        Sleep(0.1),
        reply(250, "2.0.0 Ok"),
        reply(250, "2.1.0 Ok"),
        reply(550, "5.1.1 User unknown"),
        reply(550, "5.1.1 User unknown"),
        Expect("RCPT TO:<annlee@acme.example>"),  # later questions one at a time
        Sleep(0.1),
        reply(250, "2.1.5 Ok"),
        *closing(),
    ]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            session = await session_for(nursery, script)
            probe = plan()
            result = await converse(
                session, probe, mail_from=SENDER, rcpt_limit=10, reset_first=True
            )
            assert trio.current_time() == pytest.approx(0.2)
            await session.aclose()
    assert probe.winner is not None and probe.winner.method_type == "firstlast"
    assert (result.rcpts_sent, result.errors, result.reset_failed) == (3, 2, False)


async def test_lock_step_when_the_budget_has_room_for_one_refusal_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A refused MAIL makes the server refuse the pipelined RCPT too, and count both: with one
    # error left in the session's budget, MAIL goes alone.
    script: list[Step] = [
        *opening(),
        Expect("MAIL FROM"),
        reply(250, "2.1.0 Ok"),
        Expect(f"RCPT TO:<{CATCHALL}>"),
        reply(550, "5.1.1 User unknown"),
        *closing(),
    ]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            session = await session_for(nursery, script)
            result = await converse(
                session, plan(), mail_from=SENDER, rcpt_limit=10, error_budget=1
            )
            await session.aclose()
    assert result.outcome is VisitOutcome.SESSION_ENDED and result.budget_spent
    assert trio.current_time() == 0.0


async def test_a_refused_mail_makes_the_pipelined_rcpt_replies_no_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(),
        Expect("MAIL FROM"),
        Expect("RCPT TO"),
        Expect("RCPT TO"),
        reply(553, "5.7.1 <bounce@probe.example.net>: Sender address rejected: Access denied"),
        reply(503, "5.5.1 Error: need MAIL command"),
        reply(503, "5.5.1 Error: need MAIL command"),
        *closing(),
    ]
    probe = plan()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            session = await session_for(nursery, script)
            result = await converse(session, probe, mail_from=SENDER, rcpt_limit=10)
            await session.aclose()
    assert result.outcome is VisitOutcome.POLICY_BLOCKED
    assert probe.answers == [] and probe.conclusion is None
    assert (result.rcpts_sent, result.errors) == (2, 3)
    assert result.replies[-2:] == [
        f"RCPT {CATCHALL} -> 503 5.5.1 Error: need MAIL command (no transaction: not an answer)",
        f"RCPT {ANN} -> 503 5.5.1 Error: need MAIL command (no transaction: not an answer)",
    ]


async def test_a_new_transaction_after_a_recipient_limit_pipelines_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(),
        Expect("MAIL FROM"),
        Expect(f"RCPT TO:<{CATCHALL}>"),
        Expect(f"RCPT TO:<{ANN}>"),
        reply(250, "2.1.0 Ok"),
        reply(550, "5.1.1 User unknown"),
        reply(452, "4.5.3 Too many recipients"),
        Expect("RSET"),
        reply(250, "2.0.0 Ok"),
        Expect("MAIL FROM"),
        Expect(f"RCPT TO:<{ANN}>"),
        reply(250, "2.1.0 Ok"),
        reply(250, "2.1.5 Ok"),
        *closing(),
    ]
    probe = plan()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            session = await session_for(nursery, script)
            result = await converse(session, probe, mail_from=SENDER, rcpt_limit=10)
            await session.aclose()
    assert result.outcome is VisitOutcome.CONCLUDED and result.rcpt_limit == 1
    assert probe.winner is not None and probe.winner.address == ANN
    assert trio.current_time() == 0.0
