"""SmtpSession against scripted in-memory servers, under the autojump MockClock.

Every test runs inside `trio.fail_after(600)` as an absolute bound (virtual seconds), and times
are asserted exactly: the clock starts at 0 and only jumps to deadlines.
"""

from __future__ import annotations

import errno
import math
import shutil
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from ct_actors.smtp.client import (
    SmtpClient,
    SmtpCommandRefused,
    SmtpConnectError,
    SmtpDisconnected,
    SmtpGreetingRejected,
    SmtpProtocolError,
    SmtpRejected,
    SmtpSession,
    SmtpTimeout,
    SmtpTlsError,
    StartTlsMode,
    connect_session,
    open_session,
)
from ct_actors.smtp.types import Reply
from ct_actors.testing import (
    Close,
    Expect,
    Hang,
    ScriptedConnector,
    Send,
    Sleep,
    StartTls,
    Step,
    closing,
    opening,
    reply,
)
from tests.shared_docs import skip_unless_ci

BOUND = 600.0
HELO = "probe.example.net"
ADDR = "192.0.2.25"


def now() -> float:
    return trio.current_time()


async def session_for(
    nursery: trio.Nursery,
    script: Sequence[Step],
    *,
    starttls: StartTlsMode = "never",
    ssl_context: ssl.SSLContext | None = None,
    command_timeout: float = 30.0,
    quit_timeout: float = 2.0,
) -> tuple[SmtpSession, ScriptedConnector]:
    connector = ScriptedConnector(nursery, script)
    session = await connect_session(
        connector,
        ADDR,
        25,
        helo_name=HELO,
        connect_timeout=10.0,
        command_timeout=command_timeout,
        starttls=starttls,
        ssl_context=ssl_context,
        quit_timeout=quit_timeout,
    )
    return session, connector


async def mail_and_rcpt(
    session: SmtpSession, sender: str, address: str
) -> tuple[Reply, Reply | None]:
    """MAIL FROM and one RCPT TO as one batch; the RCPT reply is None after a 421 to MAIL."""
    replies = await session.batch([("MAIL", sender), ("RCPT", address)])
    return replies[0], replies[1] if len(replies) > 1 else None


# -- the happy path ----------------------------------------------------------------------------


async def test_full_conversation(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [
        *opening(extensions=("PIPELINING", "SIZE 35882577", "ENHANCEDSTATUSCODES", "8BITMIME")),
        Expect("MAIL FROM:<bounce@probe.example.net>"),
        reply(250, "2.1.0 Ok"),
        Expect("RCPT TO:<jane.doe@example.com>"),
        Sleep(0.25),
        reply(250, "2.1.5 Ok"),
        Expect("RCPT TO:<zz-random@example.com>"),
        reply(550, "5.1.1 <zz-random@example.com>: Recipient address rejected: User unknown"),
        Expect("RSET"),
        reply(250, "2.0.0 Ok"),
        Expect("NOOP"),
        reply(250, "2.0.0 Ok"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, script)
            async with open_session(
                connector,
                ADDR,
                25,
                helo_name=HELO,
                connect_timeout=10,
                command_timeout=30,
            ) as session:
                assert session.greeting is not None and session.greeting.code == 220
                assert session.esmtp and not session.tls
                assert session.ehlo_reply is not None and session.ehlo_reply.code == 250
                assert session.extensions == {
                    "PIPELINING": "",
                    "SIZE": "35882577",
                    "ENHANCEDSTATUSCODES": "",
                    "8BITMIME": "",
                }
                assert (await session.mail_from("bounce@probe.example.net")).code == 250
                ok = await session.rcpt("jane.doe@example.com")
                assert (ok.code, str(ok.enhanced)) == (250, "2.1.5")
                unknown = await session.rcpt("zz-random@example.com")
                assert unknown.code == 550 and str(unknown.enhanced) == "5.1.1"
                assert (await session.rset()).code == 250
                assert (await session.noop()).code == 250
                assert session.usable
            server = connector.servers[0]
            await server.finished.wait()
    assert connector.attempts == [(ADDR, 25)]
    assert server.received == [
        f"EHLO {HELO}",
        "MAIL FROM:<bounce@probe.example.net>",
        "RCPT TO:<jane.doe@example.com>",
        "RCPT TO:<zz-random@example.com>",
        "RSET",
        "NOOP",
        "QUIT",
    ]
    assert not any(line.upper().startswith(("DATA", "BDAT")) for line in server.received)
    assert [(e.stage, e.command, e.code) for e in session.transcript] == [
        ("connect", f"{ADDR}:25", None),
        ("greeting", None, 220),
        ("ehlo", f"EHLO {HELO}", 250),
        ("mail", "MAIL FROM:<bounce@probe.example.net>", 250),
        ("rcpt", "RCPT TO:<jane.doe@example.com>", 250),
        ("rcpt", "RCPT TO:<zz-random@example.com>", 550),
        ("rset", "RSET", 250),
        ("noop", "NOOP", 250),
        ("quit", "QUIT", 221),
    ]
    rcpt_entry = session.transcript[4]
    assert rcpt_entry.elapsed == 0.25 and rcpt_entry.enhanced == "2.1.5"
    assert session.transcript[5].as_dict()["text"].startswith("<zz-random@example.com>: Recipient")
    stats = session.statistics()
    assert stats.commands == 7 and stats.tls is False and stats.esmtp is True
    assert stats.bytes_sent == sum(len(line) + 2 for line in server.received)
    assert stats.started_at == 0.0 and stats.duration == 0.25
    assert not session.usable


async def test_smtp_client_wrapper_and_bare_lf_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        reply(220, "mx.test ESMTP", bare_lf=True),
        Expect("EHLO"),
        reply(250, "mx.test", "PIPELINING", bare_lf=True),
        Expect("MAIL FROM:<>"),
        Send(b"250-2.1.0 first\n250 2.1.0 Ok\n"),
        Expect("QUIT"),
        Send(b"221 Bye\n"),
        Close(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            client = SmtpClient(ScriptedConnector(nursery, script), HELO, starttls="never")
            async with client.session(ADDR) as session:
                r = await session.mail_from("")
                assert r.lines == ("first", "Ok")
                assert session.extensions == {"PIPELINING": ""}


async def test_reply_split_across_packets_waits_for_the_last_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        Send(b"220-mx.test ESMTP\r\n"),
        Sleep(1.0),
        Send(b"220-still greeting\r\n220 "),
        Sleep(2.0),
        Send(b"ready\r\n"),
        Expect("EHLO"),
        reply(250, "mx.test"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script)
            assert now() == 3.0
            assert session.greeting is not None
            assert session.greeting.lines == ("mx.test ESMTP", "still greeting", "ready")
            assert session.transcript[1].elapsed == 3.0
            await session.aclose()


# -- timeouts ----------------------------------------------------------------------------------


async def test_connect_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, [], connect_delay=math.inf)
            with pytest.raises(SmtpTimeout) as info:
                async with open_session(
                    connector, ADDR, helo_name=HELO, connect_timeout=7.5, command_timeout=30
                ):
                    pytest.fail("must not get a session")  # pragma: no cover
            assert now() == 7.5
    exc = info.value
    assert (exc.stage, exc.reason, exc.timeout) == ("connect", "timeout after 7.5s", 7.5)
    assert [(e.stage, e.text, e.elapsed) for e in exc.transcript] == [
        ("connect", "timeout after 7.5s", 7.5)
    ]


async def test_connect_refused(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            connector = ScriptedConnector(nursery, connect_error=refused)
            with pytest.raises(SmtpConnectError) as info:
                await connect_session(
                    connector, ADDR, helo_name=HELO, connect_timeout=10, command_timeout=30
                )
    assert (info.value.stage, info.value.reason) == ("connect", "ECONNREFUSED")
    assert SmtpConnectError("connect", "x").reason == "x"  # both spellings accepted


async def test_greeting_timeout_is_exact_and_skips_quit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, [Hang()])
            with pytest.raises(SmtpTimeout) as info:
                await connect_session(
                    connector,
                    ADDR,
                    helo_name=HELO,
                    connect_timeout=10,
                    command_timeout=30,
                    greeting_timeout=45,
                )
            assert now() == 45.0
            await connector.servers[0].finished.wait()
    assert (info.value.stage, info.value.reason) == ("greeting", "timeout after 45s")
    assert [e.stage for e in info.value.transcript] == ["connect", "greeting"]
    assert connector.servers[0].received == []  # no QUIT after a timeout: the stream is closed


async def test_greeting_timeout_defaults_to_command_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SmtpTimeout):
                await session_for(nursery, [Hang()], command_timeout=12)
            assert now() == 12.0


async def test_command_timeout_breaks_the_session(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [
        *opening(),
        Expect("MAIL"),
        reply(250, "2.1.0 Ok"),
        Expect("RCPT"),
        Hang(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, connector = await session_for(nursery, script, command_timeout=20)
            await session.mail_from("a@probe.example.net")
            t0 = now()
            with pytest.raises(SmtpTimeout) as info:
                await session.rcpt("slow@example.com")
            assert now() - t0 == 20.0
            assert (info.value.stage, info.value.reason) == ("rcpt", "timeout after 20s")
            assert not session.usable
            with pytest.raises(SmtpDisconnected, match="unusable"):
                await session.rset()
            t1 = now()
            await session.aclose()  # no QUIT on a desynchronised session: immediate
            assert now() == t1
            await session.aclose()  # idempotent
            await connector.servers[0].finished.wait()
    assert connector.servers[0].received[-1] == "RCPT TO:<slow@example.com>"
    last = session.transcript[-1]
    assert (last.stage, last.code, last.text, last.elapsed) == (
        "rcpt",
        None,
        "timeout after 20s",
        20,
    )


async def test_quit_is_bounded_when_the_server_never_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [*opening(), Expect("QUIT"), Hang()]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, script)
            async with open_session(
                connector,
                ADDR,
                helo_name=HELO,
                connect_timeout=10,
                command_timeout=30,
                quit_timeout=2.5,
            ) as session:
                t0 = now()
            assert now() - t0 == 2.5
            await connector.servers[0].finished.wait()
    assert connector.servers[0].received[-1] == "QUIT"
    last = session.transcript[-1]
    assert (last.stage, last.command, last.code, last.elapsed) == ("quit", "QUIT", None, 2.5)


async def test_quit_is_shielded_from_outer_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [*opening(), Expect("QUIT"), Sleep(1.0), reply(221, "Bye"), Close()]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, script)
            with trio.move_on_after(5) as scope:
                async with open_session(
                    connector, ADDR, helo_name=HELO, connect_timeout=10, command_timeout=30
                ) as session:
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            assert now() == 6.0  # cancelled at 5, QUIT still answered 1s later
    assert session.transcript[-1].code == 221


async def test_cancellation_mid_command_skips_quit(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [*opening(), Expect("MAIL"), Hang()]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, connector = await session_for(nursery, script)
            with trio.move_on_after(3):
                await session.mail_from("a@probe.example.net")
            assert not session.usable
            await session.aclose()
            assert now() == 3.0
            await connector.servers[0].finished.wait()
    assert "QUIT" not in connector.servers[0].received


# -- greeting, EHLO, disconnects -----------------------------------------------------------------


async def test_greeting_421_is_rejected_without_quit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [reply(421, "4.7.0 mx.test Too many connections, try again later"), Hang()]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, script)
            with pytest.raises(SmtpGreetingRejected) as info:
                await connect_session(
                    connector, ADDR, helo_name=HELO, connect_timeout=10, command_timeout=30
                )
            assert now() == 0.0  # no QUIT wait: a 421 server is closing the channel
            await connector.servers[0].finished.wait()
    assert connector.servers[0].received == []
    exc = info.value
    assert exc.stage == "greeting" and exc.reply.code == 421
    assert str(exc.reply.enhanced) == "4.7.0"
    assert exc.reason.startswith("421 mx.test Too many connections")
    assert [e.stage for e in exc.transcript] == ["connect", "greeting"]


async def test_greeting_554_is_rejected_with_polite_quit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [reply(554, "5.7.1 No SMTP service for you"), *closing()]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, script)
            with pytest.raises(SmtpGreetingRejected) as info:
                await connect_session(
                    connector, ADDR, helo_name=HELO, connect_timeout=10, command_timeout=30
                )
    assert connector.servers[0].received == ["QUIT"]
    assert [e.stage for e in info.value.transcript] == ["connect", "greeting", "quit"]


async def test_ehlo_falls_back_to_helo(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [
        reply(220, "old.mx.test SMTP"),
        Expect(f"EHLO {HELO}"),
        reply(502, "5.5.2 Error: command not recognized"),
        Expect(f"HELO {HELO}"),
        reply(250, "old.mx.test"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script, starttls="opportunistic")
            assert not session.esmtp
            assert session.extensions == {}
            assert session.ehlo_reply is not None and session.ehlo_reply.text == "old.mx.test"
            await session.aclose()
    assert [e.command for e in session.transcript if e.stage == "ehlo"] == [
        f"EHLO {HELO}",
        f"HELO {HELO}",
    ]


async def test_ehlo_rejected_outright_no_helo(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [
        reply(220, "mx.test"),
        Expect("EHLO"),
        reply(550, "5.7.1 <probe.example.net>: Helo command rejected: Host not found"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, script)
            with pytest.raises(SmtpRejected) as info:
                await connect_session(
                    connector, ADDR, helo_name=HELO, connect_timeout=10, command_timeout=30
                )
    assert info.value.stage == "ehlo" and info.value.reply.code == 550
    assert connector.servers[0].received == [f"EHLO {HELO}", "QUIT"]


async def test_helo_also_rejected(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [
        reply(220, "mx.test"),
        Expect("EHLO"),
        reply(500, "unrecognized"),
        Expect("HELO"),
        reply(501, "bad"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SmtpRejected) as info:
                await session_for(nursery, script)
    assert info.value.reply.code == 501


async def test_disconnect_mid_reply(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [
        *opening(),
        Expect("MAIL"),
        reply(250),
        Expect("RCPT"),
        Send(b"250-partial\r\n"),
        Close(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script)
            await session.mail_from("a@probe.example.net")
            with pytest.raises(SmtpDisconnected) as info:
                await session.rcpt("x@example.com")
            assert (info.value.stage, info.value.reason) == ("rcpt", "connection closed by server")
            assert not session.usable
            await session.aclose()
    assert session.transcript[-1].text == "connection closed by server"


async def test_disconnect_before_greeting(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SmtpDisconnected) as info:
                await session_for(nursery, [Close()])
    assert info.value.stage == "greeting"


async def test_malformed_greeting_is_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SmtpProtocolError) as info:
                await session_for(nursery, [Send(b"SSH-2.0-OpenSSH_9.6\r\n"), Hang()])
    assert info.value.stage == "greeting"
    assert "malformed" in info.value.reason


async def test_421_mid_session_is_returned_then_session_is_closing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(),
        Expect("MAIL"),
        reply(421, "4.7.0 Too many errors, closing"),
        Close(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, connector = await session_for(nursery, script)
            r = await session.mail_from("a@probe.example.net")
            assert r.code == 421
            assert not session.usable
            with pytest.raises(SmtpDisconnected, match="421"):
                await session.rcpt("x@example.com")
            await session.aclose()
    assert connector.servers[0].received[-1].startswith("MAIL")


async def test_unsafe_command_refused_and_session_stays_usable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(),
        Expect("RCPT TO:<ok@example.com>"),
        reply(250, "2.1.5 Ok"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, connector = await session_for(nursery, script)
            with pytest.raises(SmtpCommandRefused, match="CR/LF"):
                await session.rcpt("x@example.com>\r\nDATA\r\n")
            assert session.usable
            assert (await session.rcpt("ok@example.com")).code == 250
            await session.aclose()
    assert connector.servers[0].received == [f"EHLO {HELO}", "RCPT TO:<ok@example.com>", "QUIT"]
    refused = session.transcript[3]
    assert (refused.stage, refused.code) == ("rcpt", None)
    assert refused.text.startswith("refused: CR/LF")


def test_no_data_method() -> None:
    assert not hasattr(SmtpSession, "data")
    assert not hasattr(SmtpSession, "bdat")
    assert not hasattr(SmtpSession, "sendmail")


async def test_concurrent_use_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [*opening(), Expect("NOOP"), Sleep(1), reply(250), *closing()]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script)
            async with trio.open_nursery() as inner:
                inner.start_soon(session.noop)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await session.rset()
            await session.aclose()


async def test_invalid_helo_name_refused(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            connector = ScriptedConnector(nursery, [])
            with pytest.raises(SmtpCommandRefused):
                await connect_session(
                    connector, ADDR, helo_name="bad name", connect_timeout=1, command_timeout=1
                )
    assert connector.attempts == []


# -- STARTTLS ----------------------------------------------------------------------------------


async def test_starttls_skipped_when_not_offered(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [*opening(extensions=("PIPELINING",)), *closing()]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, connector = await session_for(nursery, script, starttls="opportunistic")
            assert not session.tls
            await session.aclose()
    assert connector.servers[0].received == [f"EHLO {HELO}", "QUIT"]


async def test_starttls_skipped_in_mode_never(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [*opening(extensions=("STARTTLS", "PIPELINING")), *closing()]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, connector = await session_for(nursery, script, starttls="never")
            assert not session.tls and "STARTTLS" in session.extensions
            await session.aclose()
    assert connector.servers[0].received == [f"EHLO {HELO}", "QUIT"]


async def test_starttls_refused_carries_on_in_plaintext(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(extensions=("STARTTLS",)),
        Expect("STARTTLS"),
        reply(454, "4.7.0 TLS not available due to local problem"),
        Expect("MAIL"),
        reply(250, "2.1.0 Ok"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script, starttls="opportunistic")
            assert not session.tls
            assert (await session.mail_from("a@probe.example.net")).code == 250
            await session.aclose()


async def test_starttls_plaintext_injection_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(extensions=("STARTTLS",)),
        Expect("STARTTLS"),
        Send(b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n"),
        Hang(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SmtpProtocolError) as info:
                await session_for(nursery, script, starttls="opportunistic")
    assert info.value.stage == "starttls"


@pytest.fixture(scope="session")
def server_tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    openssl = shutil.which("openssl")
    if openssl is None:
        skip_unless_ci("openssl binary not available to make a test certificate")
    d: Path = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    result = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=mx.test",
        ],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        skip_unless_ci(f"openssl could not make a certificate: {result.stderr[:200]!r}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_starttls_upgrade_and_re_ehlo(
    autojump_clock: trio.testing.MockClock, server_tls_context: ssl.SSLContext
) -> None:
    script: list[Step] = [
        *opening(extensions=("PIPELINING", "STARTTLS")),
        Expect("STARTTLS"),
        reply(220, "2.0.0 Ready to start TLS"),
        StartTls(server_tls_context),
        Expect(f"EHLO {HELO}"),
        reply(250, "mx.test", "PIPELINING", "SIZE 1000"),
        Expect("MAIL FROM:<a@probe.example.net>"),
        reply(250, "2.1.0 Ok"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, connector = await session_for(nursery, script, starttls="opportunistic")
            assert session.tls and session.esmtp
            assert session.extensions == {"PIPELINING": "", "SIZE": "1000"}
            assert (await session.mail_from("a@probe.example.net")).code == 250
            await session.aclose()
            await connector.servers[0].finished.wait()
    assert connector.servers[0].tls
    assert [e.stage for e in session.transcript] == [
        "connect",
        "greeting",
        "ehlo",
        "starttls",
        "starttls",
        "ehlo",
        "mail",
        "quit",
    ]
    assert session.transcript[4].command == "TLS handshake"
    assert session.transcript[4].text.startswith("TLS")
    assert session.statistics().tls is True


async def test_starttls_handshake_failure(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [
        *opening(extensions=("STARTTLS",)),
        Expect("STARTTLS"),
        reply(220, "2.0.0 Ready to start TLS"),
        Send(b"this is not a TLS server hello at all\r\n" * 4),
        Hang(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SmtpTlsError) as info:
                await session_for(nursery, script, starttls="opportunistic")
    assert info.value.stage == "starttls"
    assert info.value.reason.startswith("tls:")


async def test_starttls_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [
        *opening(extensions=("STARTTLS",)),
        Expect("STARTTLS"),
        reply(220, "2.0.0 Ready to start TLS"),
        Hang(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SmtpTimeout) as info:
                await session_for(nursery, script, starttls="opportunistic", command_timeout=9)
            assert now() == 9.0
    assert info.value.stage == "starttls"


# -- PIPELINING (RFC 2920): MAIL FROM with the first RCPT ----------------------------------------


async def test_mail_and_rcpt_are_one_write_when_the_server_offers_pipelining(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server reads both commands before it answers (it would block on the second Expect
    # if the client waited for the MAIL reply first); the replies arrive 0.25 s apart.
    script: list[Step] = [
        *opening(extensions=("PIPELINING", "ENHANCEDSTATUSCODES")),
        Expect("MAIL FROM:<b@probe.example.net>"),
        Expect("RCPT TO:<ann@example.com>"),
        Sleep(0.25),
        reply(250, "2.1.0 Ok"),
        Sleep(0.25),
        reply(550, "5.1.1 User unknown"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script)
            assert session.pipelining
            mail, rcpt = await mail_and_rcpt(session, "b@probe.example.net", "ann@example.com")
            assert now() == 0.5
            assert (mail.code, rcpt is not None and rcpt.code) == (250, 550)
            await session.aclose()
    entries = [(e.stage, e.command, e.code, e.elapsed) for e in session.transcript[-3:-1]]
    assert entries == [
        ("mail", "MAIL FROM:<b@probe.example.net>", 250, 0.25),
        ("rcpt", "RCPT TO:<ann@example.com>", 550, 0.5),
    ]


async def test_mail_and_rcpt_in_lock_step_without_pipelining(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(extensions=("ENHANCEDSTATUSCODES",)),
        Expect("MAIL FROM:<b@probe.example.net>"),
        reply(250, "2.1.0 Ok"),  # sent before the RCPT arrives: lock-step
        Expect("RCPT TO:<ann@example.com>"),
        reply(250, "2.1.5 Ok"),
        *closing(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script)
            assert not session.pipelining
            mail, rcpt = await mail_and_rcpt(session, "b@probe.example.net", "ann@example.com")
            assert (mail.code, rcpt is not None and rcpt.code) == (250, 250)
            await session.aclose()


async def test_a_421_to_the_pipelined_mail_ends_the_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(),
        Expect("MAIL FROM"),
        Expect("RCPT TO"),
        reply(421, "4.7.0 mx.test Error: too many errors"),
        Close(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script)
            mail, rcpt = await mail_and_rcpt(session, "b@probe.example.net", "ann@example.com")
            assert (mail.code, rcpt) == (421, None)
            assert not session.usable
            await session.aclose()


async def test_a_pipelined_rcpt_that_never_gets_its_reply_times_out_and_breaks_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(),
        Expect("MAIL FROM"),
        Expect("RCPT TO"),
        reply(250, "2.1.0 Ok"),
        Hang(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script, command_timeout=30.0)
            with pytest.raises(SmtpTimeout) as caught:
                await mail_and_rcpt(session, "b@probe.example.net", "ann@example.com")
            assert caught.value.stage == "rcpt" and now() == 30.0
            assert not session.usable
            last = session.transcript[-1]
            assert (last.stage, last.command) == ("rcpt", "RCPT TO:<ann@example.com>")
            assert last.code is None
            await session.aclose()
            nursery.cancel_scope.cancel()


async def test_retire_sends_rset_and_quit_in_one_write_with_pipelining(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server reads QUIT before it answers RSET: the client did not wait in between. One
    # round trip ends the session, and the RSET reply is still returned (a 421 "too many
    # errors" there is how the pool learns a host's limit).
    script: list[Step] = [
        *opening(extensions=("PIPELINING",)),
        Expect("RSET"),
        Expect("QUIT"),
        Sleep(0.25),
        reply(421, "4.7.0 mx.example.com Error: too many errors"),
        Close(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script)
            started = now()
            rset = await session.retire()
            assert now() - started == 0.25
    assert rset is not None and rset.code == 421
    assert not session.usable
    assert [(e.stage, e.code) for e in session.transcript[-1:]] == [("rset", 421)]


async def test_retire_in_lock_step_without_pipelining_and_bounded_by_quit_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(extensions=("SIZE 10240000",)),
        Expect("RSET"),
        reply(250, "2.0.0 Ok"),  # sent before QUIT arrives: lock-step
        Expect("QUIT"),
        Hang(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script, quit_timeout=2.5)
            started = now()
            rset = await session.retire()
            assert now() - started == 2.5
            assert await session.retire() is None  # closed: idempotent
    assert rset is not None and rset.code == 250
    last = session.transcript[-1]
    assert (last.stage, last.command, last.code) == ("quit", "QUIT", None)


async def test_retire_keeps_the_rset_reply_when_the_pipelined_quit_hangs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [
        *opening(extensions=("PIPELINING",)),
        Expect("RSET"),
        Expect("QUIT"),
        reply(250, "2.0.0 Ok"),
        Hang(),
    ]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            session, _ = await session_for(nursery, script, quit_timeout=2.5)
            started = now()
            rset = await session.retire()
            assert now() - started == 2.5
    assert rset is not None and rset.code == 250
    last = session.transcript[-1]
    assert (last.stage, last.command, last.code) == ("quit", "QUIT", None)
