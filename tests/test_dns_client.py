"""UdpDnsClient against an in-process responder on loopback (real sockets, real time)."""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dns.message
import dns.rcode
import dns.resolver
import pytest
import trio
import trio.testing

from ct_actors.dns import wire
from ct_actors.dns.client import DnsClientStatistics, UdpDnsClient
from ct_actors.dns.nameservers import DnsConfigError, QuerySettings
from ct_actors.dns.types import DnsUnavailable
from ct_actors.testing import FakeDnsServer, Records

RECORDS: Records = {
    "example.com": [("MX", "10 mx1.example.com."), ("MX", "20 mx2.example.com.")],
    "mx1.example.com": [("A", "192.0.2.1")],
    "mx2.example.com": [("A", "192.0.2.2")],
    "big.example": [("MX", f"{i} mail-exchanger-number-{i:03d}.big.example.") for i in range(80)],
}


@asynccontextmanager
async def serving(*servers: FakeDnsServer) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.serve)
        yield
        nursery.cancel_scope.cancel()


def a_address(message: dns.message.Message) -> str:
    return str(next(iter(message.answer[0])).address)


async def test_answers_and_counts() -> None:
    server = FakeDnsServer(RECORDS)
    with trio.fail_after(5):
        async with serving(server), UdpDnsClient(["127.0.77.1"], port=server.port) as client:
            reply = await client.exchange("example.com", "MX")
            assert reply.nameserver == "127.0.77.1"
            assert not reply.via_tcp
            assert wire.interpret_mx("example.com", reply.message) == [
                (10, "mx1.example.com"),
                (20, "mx2.example.com"),
            ]
            assert wire.interpret_mx("example.com", reply.reply) == [
                (10, "mx1.example.com"),
                (20, "mx2.example.com"),
            ]
            nx = await client.query("missing.example.com", "A")
            assert nx.rcode() == dns.rcode.NXDOMAIN
            stats = client.statistics()
    assert stats == DnsClientStatistics(
        sent=2,
        received=2,
        timeouts=0,
        retries=0,
        stray=0,
        malformed=0,
        tcp_fallbacks=0,
        in_flight=0,
    )
    assert client.receive_buffer_bytes > 0


class DropFirst(FakeDnsServer):
    def __init__(self, *args: Any, drop: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop = drop

    async def handle_udp(self, data: bytes, address: Any) -> None:
        if self.drop > 0:
            self.drop -= 1
            return
        await super().handle_udp(data, address)


async def test_retry_after_timeout() -> None:
    server = DropFirst(RECORDS)
    with trio.fail_after(5):
        async with (
            serving(server),
            UdpDnsClient(["127.0.77.1"], port=server.port, timeout=0.3) as client,
        ):
            start = trio.current_time()
            message = await client.query("mx1.example.com", "A")
            assert trio.current_time() - start >= 0.3
    assert a_address(message) == "192.0.2.1"
    stats = client.statistics()
    assert (stats.sent, stats.timeouts, stats.retries) == (2, 1, 1)


async def test_gives_up_after_attempts() -> None:
    server = DropFirst(RECORDS, drop=10**6)
    with trio.fail_after(5):
        async with (
            serving(server),
            UdpDnsClient(["127.0.77.1"], port=server.port, timeout=0.2, attempts=3) as client,
        ):
            with pytest.raises(DnsUnavailable) as info:
                await client.query("example.com", "MX")
    assert "3 attempt" in info.value.reason
    assert info.value.nameserver == "127.0.77.1"
    assert client.statistics().timeouts == 3


async def test_next_nameserver_round_robin() -> None:
    dead = DropFirst(RECORDS, drop=10**6, host="127.0.77.1")
    alive = FakeDnsServer(RECORDS, host="127.0.77.2")
    with trio.fail_after(5):
        async with serving(dead):
            # Both servers must listen on the same port: the client takes one port for all.
            alive.port = dead.port
            async with (
                serving(alive),
                UdpDnsClient(["127.0.77.1", "127.0.77.2"], port=dead.port, timeout=0.2) as client,
            ):
                reply = await client.exchange("mx2.example.com", "A")
    assert reply.nameserver == "127.0.77.2"
    assert a_address(reply.message) == "192.0.2.2"
    assert (dead.udp_queries, alive.udp_queries) == (1, 1)


async def test_servfail_moves_to_next_nameserver_else_is_returned() -> None:
    failing = FakeDnsServer(RECORDS, host="127.0.77.1", rcodes={"example.com": "SERVFAIL"})
    healthy = FakeDnsServer(RECORDS, host="127.0.77.2")
    with trio.fail_after(5):
        async with serving(failing):
            healthy.port = failing.port
            async with serving(healthy):
                servers = ["127.0.77.1", "127.0.77.2"]
                async with UdpDnsClient(servers, port=failing.port, timeout=0.5) as client:
                    reply = await client.exchange("example.com", "MX")
                    assert reply.nameserver == "127.0.77.2"
                    assert reply.message.rcode() == dns.rcode.NOERROR
                async with UdpDnsClient(servers[:1], port=failing.port, timeout=0.5) as client:
                    message = await client.query("example.com", "MX")
                    assert message.rcode() == dns.rcode.SERVFAIL
                    assert client.statistics().sent == 1


class Forger(FakeDnsServer):
    """Before each genuine reply, sends the datagrams an off-path attacker or a confused
    network might: wrong id, wrong question, right reply from the wrong port, garbage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finished = trio.Event()

    async def handle_udp(self, data: bytes, address: Any) -> None:
        query = dns.message.from_wire(data)
        genuine = self.udp_reply(query)
        wrong_id = bytes([genuine[0] ^ 0xFF]) + genuine[1:]
        other = dns.message.make_query("other.example", "A", id=query.id)
        wrong_question = self.udp_reply(other)
        await self.send(wrong_id, address)
        await self.send(wrong_question, address)
        await self.send(b"\x01", address)
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as rogue:
            await rogue.bind((self.host, 0))
            await rogue.sendto(genuine, address)
        # Matches id and question but the body is cut: must not end the query.
        await self.send(genuine[:-2], address)
        await trio.sleep(0.05)
        await self.send(genuine, address)
        await self.send(genuine, address)  # a duplicate is stray too
        self.finished.set()


async def test_stray_and_forged_datagrams_are_ignored() -> None:
    server = Forger(RECORDS)
    with trio.fail_after(5):
        async with serving(server), UdpDnsClient(["127.0.77.1"], port=server.port) as client:
            message = await client.query("mx1.example.com", "A")
            assert a_address(message) == "192.0.2.1"
            await server.finished.wait()
            await trio.sleep(0.05)  # loopback delivery is immediate; let the loop drain it
    stats = client.statistics()
    assert stats.received == 7
    assert stats.stray == 5
    assert stats.malformed == 1
    assert stats.timeouts == 0


async def test_truncated_reply_retried_over_tcp() -> None:
    server = FakeDnsServer(RECORDS)
    with trio.fail_after(5):
        async with serving(server), UdpDnsClient(["127.0.77.1"], port=server.port) as client:
            reply = await client.exchange("big.example", "MX")
    assert reply.via_tcp
    hosts = wire.interpret_mx("big.example", reply.message)
    assert isinstance(hosts, list)
    assert len(hosts) == 80
    assert (server.udp_queries, server.tcp_queries) == (1, 1)
    assert client.statistics().tcp_fallbacks == 1


class Reorderer(FakeDnsServer):
    """Holds replies until `batch` queries arrived, then answers them in random order."""

    def __init__(self, *args: Any, batch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch = batch
        self.held: list[tuple[bytes, Any]] = []

    async def handle_udp(self, data: bytes, address: Any) -> None:
        self.held.append((self.udp_reply(dns.message.from_wire(data)), address))
        if len(self.held) == self.batch:
            random.shuffle(self.held)
            for reply, addr in self.held:
                await self.send(reply, addr)


def numbered_hosts(count: int) -> Records:
    return {
        f"h{i}.example": [("A", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")] for i in range(count)
    }


async def ask_all(client: UdpDnsClient, count: int) -> dict[int, str]:
    answers: dict[int, str] = {}

    async def ask(i: int) -> None:
        answers[i] = a_address(await client.query(f"h{i}.example", "A"))

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(ask, i)
    return answers


async def test_out_of_order_replies_reach_their_queries() -> None:
    server = Reorderer(numbered_hosts(64), batch=64)
    with trio.fail_after(5):
        async with serving(server), UdpDnsClient(["127.0.77.1"], port=server.port) as client:
            answers = await ask_all(client, 64)
    assert answers == {i: f"10.0.0.{i}" for i in range(64)}
    assert client.statistics().stray == 0


class FastAResponder(FakeDnsServer):
    """Answers "h<i>.example A" with 10.x.y.z encoding i, hand-encoded in a few microseconds:
    dnspython's ~0.5 ms per reply would make the responder, not the client, the subject of a
    2,000-query test (and make it slow on a busy machine)."""

    async def handle_udp(self, data: bytes, address: Any) -> None:
        qid, flags = struct.unpack_from("!HH", data)
        label_len = data[12]
        i = int(data[14 : 13 + label_len])  # the label is b"h<i>"
        question_end = data.index(b"\x00", 12) + 5  # name's root byte + type + class
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + bytes(
            (10, i >> 16, (i >> 8) & 255, i & 255)
        )
        header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 1, 0, 0)
        await self.send(header + data[12:question_end] + answer, address)


async def test_two_thousand_concurrent_queries() -> None:
    count = 2000
    server = FastAResponder()
    with trio.fail_after(5):
        async with serving(server), UdpDnsClient(["127.0.77.1"], port=server.port) as client:
            answers = await ask_all(client, count)
    # Every reply reached the query that asked for it.
    assert answers == {i: f"10.0.{i >> 8}.{i & 255}" for i in range(count)}
    stats = client.statistics()
    assert stats.sent == count + stats.retries
    assert stats.malformed == 0


async def test_duplicate_questions_in_flight_get_distinct_ids() -> None:
    server = Reorderer(RECORDS, batch=20)
    with trio.fail_after(5):
        async with serving(server), UdpDnsClient(["127.0.77.1"], port=server.port) as client:
            results: list[str] = []

            async def ask() -> None:
                results.append(a_address(await client.query("mx1.example.com", "A")))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(ask)
    assert results == ["192.0.2.1"] * 20
    ids = {dns.message.from_wire(reply).id for reply, _ in server.held}
    assert len(ids) == 20


async def test_timeouts_follow_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    server = DropFirst(RECORDS, drop=10**6)
    async with serving(server), UdpDnsClient(["127.0.77.1"], port=server.port) as client:
        start = trio.current_time()
        with pytest.raises(DnsUnavailable):
            await client.query("example.com", "MX")
        # 2 attempts x 2 s of virtual time, no real waiting.
        assert trio.current_time() - start == pytest.approx(4.0)


async def test_close_wakes_pending_queries() -> None:
    server = DropFirst(RECORDS, drop=10**6)
    with trio.fail_after(5):
        async with serving(server):
            failures: list[str] = []

            async def ask(client: UdpDnsClient) -> None:
                try:
                    await client.query("example.com", "MX")
                except DnsUnavailable as exc:
                    failures.append(exc.reason)

            async with (
                trio.open_nursery() as nursery,
                UdpDnsClient(["127.0.77.1"], port=server.port, timeout=30) as client,
            ):
                nursery.start_soon(ask, client)
                await trio.sleep(0.1)
            assert failures == ["client closed"]
            with pytest.raises(RuntimeError):
                await client.query("example.com", "MX")


async def test_cancelled_query_leaves_the_client_usable() -> None:
    server = DropFirst(RECORDS, drop=1)
    with trio.fail_after(5):
        async with (
            serving(server),
            UdpDnsClient(["127.0.77.1"], port=server.port, timeout=0.3) as client,
        ):
            with trio.move_on_after(0.1) as scope:
                await client.query("example.com", "MX")
            assert scope.cancelled_caught
            assert client.statistics().in_flight == 0
            assert a_address(await client.query("mx1.example.com", "A")) == "192.0.2.1"
            await trio.sleep(0.4)  # past the cancelled attempt's deadline
            stats = client.statistics()
    assert (stats.sent, stats.timeouts, stats.in_flight) == (2, 0, 0)


class Late(FakeDnsServer):
    """Answers every query, `delay` seconds late."""

    def __init__(self, *args: Any, delay: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay

    async def handle_udp(self, data: bytes, address: Any) -> None:
        assert self.nursery is not None
        reply = self.udp_reply(dns.message.from_wire(data))

        async def later() -> None:
            await trio.sleep(self.delay)
            await self.send(reply, address)

        self.nursery.start_soon(later)


async def test_timeouts_expire_together_and_late_replies_are_stray(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Late(numbered_hosts(50), delay=3.0)
    async with (
        serving(server),
        UdpDnsClient(["127.0.77.1"], port=server.port, timeout=2.0, attempts=1) as client,
    ):
        failures: list[float] = []

        async def ask(i: int) -> None:
            with pytest.raises(DnsUnavailable, match="timeout"):
                await client.query(f"h{i}.example", "A")
            failures.append(trio.current_time())

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(ask, i)
        assert failures == [pytest.approx(start + 2.0)] * 50
        await trio.sleep(2.0)  # the replies arrive, a second after their queries gave up
        stats = client.statistics()
    assert (stats.timeouts, stats.received, stats.stray) == (50, 50, 50)


async def test_body_exception_propagates_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with UdpDnsClient(["127.0.77.1"], port=9):
            raise KeyError("boom")


# --- configuration (no sockets) -----------------------------------------------------------------


class FakeResolver:
    nameservers: list[str] = ["192.0.2.53", "2001:db8::53"]


class NoResolver:
    def __init__(self) -> None:
        raise dns.resolver.NoResolverConfiguration("no nameservers")  # type: ignore[no-untyped-call]


def test_empty_nameservers_means_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns.resolver, "Resolver", FakeResolver)
    assert UdpDnsClient([]).nameservers == ["192.0.2.53", "2001:db8::53"]


def test_missing_system_resolver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns.resolver, "Resolver", NoResolver)
    with pytest.raises(DnsConfigError, match=r"resolv\.conf"):
        UdpDnsClient([])


def test_nameservers_must_be_addresses() -> None:
    with pytest.raises(DnsConfigError):
        UdpDnsClient(["dns.example.com"])
    with pytest.raises(ValueError):
        UdpDnsClient(["127.0.0.1"], attempts=0)


def test_reconfigure_applies_new_timeout_and_attempts_and_refuses_nonsense() -> None:
    client = UdpDnsClient(["127.0.0.1"], timeout=2.0, attempts=2)
    client.reconfigure(QuerySettings(timeout=0.5, attempts=3))
    assert (client._timeout, client._attempts) == (0.5, 3)
    with pytest.raises(ValueError):
        client.reconfigure(QuerySettings(timeout=0.0, attempts=1))
    assert (client._timeout, client._attempts) == (0.5, 3)
