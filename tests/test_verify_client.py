"""MillionVerifierClient: the pure parser on every kind of answer, then the real client against
the local fake API over loopback sockets (real clock, short timeouts). The API key must never
show up in an exception's text, repr or traceback, nor in a log line."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
import traceback
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from ct_actors.testing import MemoryVerifierLedger
from ct_actors.testing.verifier import (
    Answer,
    CreditsExhausted,
    Drop,
    FakeMillionVerifier,
    Hang,
    HttpStatus,
    InvalidKey,
    Malformed,
    open_fake_api,
    rate_limited,
    server_error,
)
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.toolbox import load_toolbox
from ct_actors.verify.answer import VendorVerdict, parse_answer, parse_retry_after
from ct_actors.verify.client import MillionVerifierClient
from ct_actors.verify.errors import (
    RejectedKind,
    UnavailableKind,
    VerifierError,
    VerifierRejected,
    VerifierUnavailable,
)
from ct_actors.verify.gate import BUDGET_CAP_REACHED, EmailVerifier, GateSettings
from tests.verify_support import with_spec

pytestmark = pytest.mark.timeout(60)

KEY = "mv-SECRET-key-4f9a2b7c81"
ADDR = "ann.lee@acme.com"
SPEC = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml").email_verifier


def answer_doc(result: str = "ok", **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "email": ADDR,
        "quality": "good",
        "result": result,
        "resultcode": 1,
        "subresult": result,
        "free": False,
        "role": False,
        "didyoumean": "",
        "credits": 4321,
        "executiontime": 1,
        "error": "",
        "livemode": True,
    }
    doc.update(fields)
    return doc


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def leaks(exc: BaseException) -> str:
    """Everything an exception may put in a log: str, repr, args and the formatted traceback."""
    return "\n".join(
        [str(exc), repr(exc), repr(exc.args), *traceback.format_exception(exc)]
    )


# ─── the pure parser ─────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("result", "verdict"),
    [
        ("ok", VendorVerdict.VALID),
        ("catch_all", VendorVerdict.CATCH_ALL),
        ("unknown", VendorVerdict.UNKNOWN),
        ("invalid", VendorVerdict.INVALID),
        ("disposable", VendorVerdict.DISPOSABLE),
    ],
)
def test_parse_every_result_kind(result: str, verdict: VendorVerdict) -> None:
    answer = parse_answer(body(answer_doc(result, subresult="mailbox_exists")), ADDR)
    assert answer.verdict is verdict
    assert answer.result == result
    assert answer.credits == 4321
    assert answer.subresult == "mailbox_exists"
    assert answer.quality == "good"
    assert answer.role is False and answer.free is False
    assert answer.livemode is True
    assert answer.raw["result"] == result
    assert answer.evidence()["vendor_result"] == result


def test_parse_tolerates_unknown_fields_and_missing_optional_ones() -> None:
    doc = answer_doc("ok", new_field={"x": 1})
    for name in ("quality", "resultcode", "subresult", "free", "role", "didyoumean",
                 "executiontime", "livemode", "error"):
        del doc[name]
    answer = parse_answer(body(doc), "Ann.Lee@ACME.com")  # the echo is compared case-blind
    assert answer.verdict is VendorVerdict.VALID
    assert answer.quality is None and answer.livemode is None


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Insufficient credits", RejectedKind.CREDITS_EXHAUSTED),
        ("No credits left on this account", RejectedKind.CREDITS_EXHAUSTED),
        ("Apikey not found", RejectedKind.INVALID_KEY),
        ("Invalid API key", RejectedKind.INVALID_KEY),
    ],
)
def test_error_answers_are_refusals(message: str, kind: RejectedKind) -> None:
    doc = answer_doc("error", resultcode=4, error=message, credits=0)
    with pytest.raises(VerifierRejected) as caught:
        parse_answer(body(doc), ADDR)
    assert caught.value.kind is kind
    assert caught.value.exhausted is (kind is RejectedKind.CREDITS_EXHAUSTED)


def test_unknown_error_answer_is_transient_and_unbilled() -> None:
    with pytest.raises(VerifierUnavailable) as caught:
        parse_answer(body(answer_doc("error", error="Server is busy, try later")), ADDR)
    assert caught.value.kind is UnavailableKind.VENDOR_ERROR
    assert caught.value.may_have_billed is False
    with pytest.raises(VerifierUnavailable) as caught:
        parse_answer(body(answer_doc("error", error="")), ADDR)
    assert caught.value.kind is UnavailableKind.VENDOR_ERROR


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"email": "ann.lee@acme.com", "result": "o',  # truncated
        b"[1, 2]",
        b"\xff\xfe\x00",
        body(answer_doc(result=None)),
        body(answer_doc(result="maybe")),
        body(answer_doc(result=1)),
        body(answer_doc(email="bob@acme.com")),  # someone else's answer
        body(answer_doc(email=None)),
        body(answer_doc(credits=None)),
        body(answer_doc(credits="12")),
        body(answer_doc(credits=True)),
        body(answer_doc(credits=-1)),
        body(answer_doc(credits=1.5)),
        body(answer_doc(role="yes")),
        body(answer_doc(resultcode=True)),
        body(answer_doc(quality=3)),
        b'{"email": "ann.lee@acme.com", "result": "ok", "credits": 3, "executiontime": NaN}',
    ],
)
def test_malformed_answers_are_transient_never_verdicts(raw: bytes) -> None:
    with pytest.raises(VerifierUnavailable) as caught:
        parse_answer(raw, ADDR)
    assert caught.value.kind in (UnavailableKind.MALFORMED, UnavailableKind.VENDOR_ERROR)


def test_partial_answer_without_result_is_malformed() -> None:
    doc = answer_doc()
    del doc["result"]
    with pytest.raises(VerifierUnavailable) as caught:
        parse_answer(body(doc), ADDR)
    assert caught.value.kind is UnavailableKind.MALFORMED
    assert caught.value.may_have_billed is True  # a 200 came back: the vendor may have billed


def test_test_mode_answers_are_refused_unless_allowed() -> None:
    raw = body(answer_doc("invalid", livemode=False))
    with pytest.raises(VerifierRejected) as caught:
        parse_answer(raw, ADDR)
    assert caught.value.kind is RejectedKind.NOT_LIVE
    assert parse_answer(raw, ADDR, require_livemode=False).verdict is VendorVerdict.INVALID


def test_error_text_is_redacted() -> None:
    client = MillionVerifierClient("http://127.0.0.1:1", KEY)
    doc = answer_doc("error", error=f"Apikey {KEY} not found")
    with pytest.raises(VerifierRejected) as caught:
        parse_answer(body(doc), ADDR, redactor=client.redact)
    assert KEY not in leaks(caught.value)


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("soon") is None
    now = time.time()
    later = email.utils.format_datetime(
        dt.datetime.fromtimestamp(now + 30, tz=dt.UTC), usegmt=True
    )
    delta = parse_retry_after(later, now=now)
    assert delta is not None and 29 <= delta <= 30
    past = email.utils.format_datetime(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), usegmt=True)
    assert parse_retry_after(past) == 0.0


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.example.com",
        "https://user:pw@api.example.com",
        "https://api.example.com/?api=x",
        "https://",
        "https://api.example.com:99999",
    ],
)
def test_base_url_is_validated(url: str) -> None:
    with pytest.raises(ValueError):
        MillionVerifierClient(url, KEY)


def test_constructor_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        MillionVerifierClient("https://api.example.com", "")
    with pytest.raises(ValueError):
        MillionVerifierClient("https://api.example.com", "key with space")
    with pytest.raises(ValueError):
        MillionVerifierClient("https://api.example.com", KEY, vendor_timeout=1)
    with pytest.raises(ValueError):
        MillionVerifierClient("https://api.example.com", KEY, timeout=0)


def test_endpoint_and_repr_never_show_the_key() -> None:
    client = MillionVerifierClient("https://api.millionverifier.com/", KEY)
    assert client.endpoint == "https://api.millionverifier.com/api/v3/"
    assert KEY not in repr(client)
    proxied = MillionVerifierClient("http://[::1]:8080/mv", KEY)
    assert proxied.endpoint == "http://[::1]:8080/mv/api/v3/"


# ─── the client against the fake API, over loopback ─────────────────────────────────────────


@pytest.fixture
async def fake() -> AsyncIterator[FakeMillionVerifier]:
    async with open_fake_api(api_key=KEY, credits=100) as api:
        yield api


def client_for(fake: FakeMillionVerifier, *, timeout: float = 2.0, key: str = KEY) -> (
    MillionVerifierClient
):
    assert fake.base_url is not None
    return MillionVerifierClient(fake.base_url, key, timeout=timeout, vendor_timeout=3)


async def test_verdicts_over_the_wire(fake: FakeMillionVerifier) -> None:
    client = client_for(fake)
    with trio.fail_after(10):
        for result, verdict in [
            ("ok", VendorVerdict.VALID),
            ("catch_all", VendorVerdict.CATCH_ALL),
            ("unknown", VendorVerdict.UNKNOWN),
            ("invalid", VendorVerdict.INVALID),
            ("disposable", VendorVerdict.DISPOSABLE),
        ]:
            address = f"{result}@acme.com"
            fake.set_result(address, result, subresult=f"sub-{result}")
            answer = await client.verify(address)
            assert answer.verdict is verdict
            assert answer.subresult == f"sub-{result}"
        # Chunked transfer encoding (with a chunk extension) decodes the same.
        fake.script(ADDR, Answer("invalid", chunked=True))
        assert (await client.verify(ADDR)).verdict is VendorVerdict.INVALID
    assert fake.credits == 94
    assert [r.key_ok for r in fake.requests] == [True] * 6
    assert {r.vendor_timeout for r in fake.requests} == {"3"}
    assert (await client.verify("x+tag@acme.com")).address == "x+tag@acme.com"  # %2B, not space
    assert fake.requests[-1].address == "x+tag@acme.com"


async def test_slow_answer_times_out(fake: FakeMillionVerifier) -> None:
    client = client_for(fake, timeout=0.3)
    fake.script(ADDR, Answer("ok", delay=5.0))
    with trio.fail_after(5):
        started = trio.current_time()
        with pytest.raises(VerifierUnavailable) as caught:
            await client.verify(ADDR)
        assert trio.current_time() - started < 2.0
    assert caught.value.kind is UnavailableKind.TIMEOUT
    assert caught.value.may_have_billed is True  # the request had gone out
    assert "0.3s" in str(caught.value)


async def test_server_that_never_answers_times_out(fake: FakeMillionVerifier) -> None:
    client = client_for(fake, timeout=0.3)
    fake.script(ADDR, Hang())
    with trio.fail_after(5), pytest.raises(VerifierUnavailable) as caught:
        await client.verify(ADDR)
    assert caught.value.kind is UnavailableKind.TIMEOUT


async def test_429_with_retry_after(fake: FakeMillionVerifier) -> None:
    client = client_for(fake)
    fake.script(ADDR, rate_limited("7"))
    with trio.fail_after(5), pytest.raises(VerifierUnavailable) as caught:
        await client.verify(ADDR)
    assert caught.value.kind is UnavailableKind.RATE_LIMITED
    assert caught.value.retry_after == 7.0
    assert caught.value.status == 429
    assert caught.value.may_have_billed is False


@pytest.mark.parametrize(
    ("status", "billed"), [(500, True), (502, True), (503, False), (504, True)]
)
async def test_5xx_is_transient(fake: FakeMillionVerifier, status: int, billed: bool) -> None:
    client = client_for(fake)
    fake.script(ADDR, server_error(status))
    with trio.fail_after(5), pytest.raises(VerifierUnavailable) as caught:
        await client.verify(ADDR)
    assert caught.value.kind is UnavailableKind.SERVER_ERROR
    assert caught.value.status == status
    assert caught.value.may_have_billed is billed


@pytest.mark.parametrize(
    "reply",
    [
        Malformed(),
        Malformed(b"<html>maintenance</html>"),
        Answer("ok", omit=("result",)),
        Answer("ok", omit=("credits",)),
        Answer("ok", extra={"credits": "lots"}),
        Drop(),
        HttpStatus(200, b"x" * 70_000),  # larger than any answer
    ],
)
async def test_malformed_and_partial_answers_are_transient(
    fake: FakeMillionVerifier, reply: Any
) -> None:
    client = client_for(fake)
    fake.script(ADDR, reply)
    with trio.fail_after(5), pytest.raises(VerifierUnavailable) as caught:
        await client.verify(ADDR)
    assert caught.value.kind is UnavailableKind.MALFORMED
    assert caught.value.may_have_billed is True


async def test_exhausted_credits_are_distinguishable(fake: FakeMillionVerifier) -> None:
    client = client_for(fake)
    fake.script(ADDR, CreditsExhausted())
    with trio.fail_after(5), pytest.raises(VerifierRejected) as caught:
        await client.verify(ADDR)
    assert caught.value.exhausted
    # The fake runs out by itself too: the last credit, then the error answer.
    fake.credits = 1
    with trio.fail_after(5):
        assert (await client.verify("bob@acme.com")).credits == 0
        with pytest.raises(VerifierRejected) as caught:
            await client.verify("carl@acme.com")
    assert caught.value.kind is RejectedKind.CREDITS_EXHAUSTED
    fake.script(ADDR, HttpStatus(402, b'{"error": "payment required"}'))
    with trio.fail_after(5), pytest.raises(VerifierRejected) as caught:
        await client.verify(ADDR)
    assert caught.value.exhausted


async def test_invalid_key(fake: FakeMillionVerifier) -> None:
    client = client_for(fake, key="wrong-key-123456")
    with trio.fail_after(5), pytest.raises(VerifierRejected) as caught:
        await client.verify(ADDR)
    assert caught.value.kind is RejectedKind.INVALID_KEY
    assert not caught.value.exhausted
    assert fake.requests[-1].key_ok is False
    fake.script(ADDR, HttpStatus(401, b"unauthorized"))
    with trio.fail_after(5), pytest.raises(VerifierRejected) as caught:
        await client_for(fake).verify(ADDR)
    assert caught.value.kind is RejectedKind.INVALID_KEY


async def test_redirects_are_never_followed(fake: FakeMillionVerifier) -> None:
    client = client_for(fake)
    fake.script(ADDR, HttpStatus(302, b""))
    with trio.fail_after(5), pytest.raises(VerifierRejected) as caught:
        await client.verify(ADDR)
    assert caught.value.kind is RejectedKind.HTTP_STATUS
    assert fake.count() == 1
    assert fake.base_url is not None
    wrong_path = MillionVerifierClient(fake.base_url + "/nope", KEY, timeout=2)
    with trio.fail_after(5), pytest.raises(VerifierRejected) as caught:
        await wrong_path.verify(ADDR)
    assert caught.value.status == 404


async def test_connection_refused_is_transient_and_unbilled() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    client = MillionVerifierClient(f"http://127.0.0.1:{port}", KEY, timeout=2)
    with trio.fail_after(5), pytest.raises(VerifierUnavailable) as caught:
        await client.verify(ADDR)
    assert caught.value.kind is UnavailableKind.CONNECTION
    assert caught.value.may_have_billed is False


async def test_https_speaks_tls(fake: FakeMillionVerifier) -> None:
    """An https base URL wraps the connection in TLS; a peer that does not speak it fails the
    handshake before any request byte is sent (so: transient, not billed)."""
    assert fake.base_url is not None
    port = int(fake.base_url.rsplit(":", 1)[1])
    client = MillionVerifierClient(f"https://127.0.0.1:{port}", KEY, timeout=0.5)
    with trio.fail_after(5), pytest.raises(VerifierUnavailable) as caught:
        await client.verify(ADDR)
    assert caught.value.kind in (UnavailableKind.CONNECTION, UnavailableKind.TIMEOUT)
    assert caught.value.may_have_billed is False
    assert fake.count() == 0


async def test_the_key_never_appears_in_errors_or_logs(fake: FakeMillionVerifier) -> None:
    """Every failure mode, through the client and through the gate (which logs), with a vendor
    and a proxy that echo the request URL back in their error texts."""
    assert fake.base_url is not None
    echoed = f"GET /api/v3/?api={KEY}&email={ADDR}"
    replies: list[Any] = [
        Answer("ok", delay=5.0),
        Hang(),
        rate_limited("1"),
        server_error(502),
        HttpStatus(500, f"<pre>{echoed}</pre>".encode()),
        HttpStatus(404, echoed.encode()),
        HttpStatus(418, f"{{\"api\": \"{KEY}\"}}".encode()),
        Malformed(f'{{"broken": "{KEY}'.encode()),
        Answer("error", extra={"error": f"Apikey {KEY} not found"}),
        Answer("error", extra={"error": f"Insufficient credits for key {KEY}"}),
        Answer("error", extra={"error": f"busy: {echoed}"}),
        CreditsExhausted(),
        InvalidKey(),
        Drop(),
    ]
    client = client_for(fake, timeout=0.3)
    texts: list[str] = []
    with capture_logs() as logs, trio.fail_after(30):
        for reply in replies:
            fake.script(ADDR, reply)
            with pytest.raises(VerifierError) as caught:
                await client.verify(ADDR)
            texts.append(leaks(caught.value))
        # The gate logs warnings / criticals for the same failures.
        switches = KillSwitches({BUDGET_CAP_REACHED: "halt_and_alert"})
        spec = with_spec(SPEC, initial_delay=0.01)
        for index, reply in enumerate(replies):
            address = f"p{index}@acme.com"
            fake.script(address, reply, reply, reply)
            gate = EmailVerifier(
                spec,
                client=client,
                ledger=MemoryVerifierLedger(),
                switches=switches,
                clock=UtcClock(dt.datetime(2026, 11, 29, tzinfo=dt.UTC), trio.current_time()),
                owner="d1",
                settings=GateSettings(max_retry_after=0.05),
            )
            decision = await gate.check(address)
            texts.append(json.dumps(decision.evidence()))
            switches.clear_all()
    assert logs, "the gate logged nothing"
    everything = "\n".join(texts) + "\n" + "\n".join(repr(event) for event in logs)
    assert KEY not in everything
    assert "***" in everything  # the echoes were there, masked
    assert any(e["event"] == "verifier_unavailable" for e in logs)
    assert any(e["event"] == "kill_switch_tripped" for e in logs)
    assert any(e["event"] == "verifier_halted" for e in logs)


async def test_spend_is_decimal_exact() -> None:
    """The registry's 0.004 stays exact through the gate (no binary float drift at the cap)."""
    assert SPEC.cost.per_call == Decimal("0.004")
    assert SPEC.cost.monthly_budget_cap == Decimal("50")
    assert SPEC.cost.monthly_budget_cap / SPEC.cost.per_call == 12_500


# ─── building it for the daemon ─────────────────────────────────────────────────────────────


def test_api_key_comes_from_the_registry_variable() -> None:
    from ct_actors.verify.factory import api_key_from_environment, api_key_variable

    assert api_key_variable(SPEC) == "MILLIONVERIFIER_API_KEY"
    assert api_key_from_environment(SPEC, {"MILLIONVERIFIER_API_KEY": f" {KEY}\n"}) == KEY
    assert api_key_from_environment(SPEC, {"MILLIONVERIFIER_API_KEY": "  "}) is None
    assert api_key_from_environment(SPEC, {}) is None


async def test_make_email_verifier_end_to_end(fake: FakeMillionVerifier) -> None:
    from ct_actors.verify.factory import make_email_verifier

    assert fake.base_url is not None
    fake.set_result(ADDR, "invalid")
    verifier = make_email_verifier(
        SPEC,
        api_key=KEY,
        ledger=MemoryVerifierLedger(),
        switches=KillSwitches({BUDGET_CAP_REACHED: "halt_and_alert"}),
        clock=UtcClock(dt.datetime(2026, 11, 29, tzinfo=dt.UTC), trio.current_time()),
        owner="d1",
        limiter=None,
        base_url=fake.base_url,
        timeout=2.0,
        vendor_timeout=2,
    )
    with trio.fail_after(10):
        decision = await verifier.check(ADDR)
    assert decision.verdict is VendorVerdict.INVALID
    assert fake.requests[-1].vendor_timeout == "2"
