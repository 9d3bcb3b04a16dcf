"""Kill-switch detectors and the switch registry, including wait_clear on the MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ct_actors.throttle.killswitch import (
    DistinctFailures,
    DistinctFailuresStatistics,
    KillSwitches,
    SwitchState,
    SwitchStatistics,
)

BOUND = 60.0


def test_distinct_failures_trips_once_on_the_nth_distinct_key() -> None:
    detector = DistinctFailures(3)
    assert [detector.failure(k) for k in ("a", "a", "b", "b", "a")] == [False] * 5
    assert detector.failure("c") is True
    assert detector.tripped
    assert [detector.failure(k) for k in ("d", "e", "c")] == [False] * 3
    assert detector.statistics() == DistinctFailuresStatistics(
        threshold=3,
        distinct=3,
        tripped=True,
        trips=1,
        failures=9,
        successes=0,
    )


def test_distinct_failures_success_resets() -> None:
    detector = DistinctFailures(2)
    assert detector.failure("a") is False
    detector.success()
    assert detector.failure("b") is False
    assert detector.failure("b") is False
    assert detector.failure("c") is True
    detector.success()  # re-arms after a trip too
    assert not detector.tripped
    assert detector.failure("a") is False
    assert detector.failure("d") is True
    assert detector.statistics().trips == 2


def test_distinct_failures_reset() -> None:
    detector = DistinctFailures(1)
    assert detector.failure("a") is True
    assert detector.failure("b") is False
    detector.reset()
    assert detector.statistics().distinct == 0
    assert detector.failure("a") is True


@pytest.mark.parametrize("threshold", [0, -1])
def test_detectors_refuse_bad_thresholds(threshold: int) -> None:
    with pytest.raises(ValueError):
        DistinctFailures(threshold)


SWITCHES = {"resolver": "halt_dns", "blocklist": "halt_and_alert", "port25": "halt_smtp"}


def test_trip_and_clear() -> None:
    switches = KillSwitches(SWITCHES)
    assert switches.names == ["resolver", "blocklist", "port25"]
    assert switches.tripped() == []
    assert switches.trip("blocklist", "3 hosts said 5.7.1", 10.0) is True
    assert switches.trip("blocklist", "another reason", 11.0) is False
    assert switches.is_tripped("blocklist")
    assert not switches.is_tripped("resolver")
    assert switches.tripped() == [
        SwitchState("blocklist", "halt_and_alert", True, 10.0, "3 hosts said 5.7.1", 1)
    ]
    assert switches.clear("blocklist") is True
    assert switches.clear("blocklist") is False
    assert switches.trip("blocklist", "again", 20.0) is True
    assert switches.statistics().switches["blocklist"] == SwitchStatistics(
        action="halt_and_alert", tripped=True, since=20.0, reason="again", trips=2
    )


def test_tripped_returns_copies() -> None:
    switches = KillSwitches(SWITCHES)
    switches.trip("port25", "timeouts", 1.0)
    switches.tripped()[0].tripped = False
    assert switches.is_tripped("port25")


def test_clear_all() -> None:
    switches = KillSwitches(SWITCHES)
    switches.trip("port25", "timeouts", 1.0)
    switches.trip("resolver", "SERVFAIL everywhere", 2.0)
    assert switches.clear_all() == ["resolver", "port25"]
    assert switches.clear_all() == []
    assert switches.statistics().switches == {
        name: SwitchStatistics(action, False, None, None, 0 if name == "blocklist" else 1)
        for name, action in SWITCHES.items()
    }


def test_unknown_names_are_refused() -> None:
    switches = KillSwitches(SWITCHES)
    with pytest.raises(KeyError, match="unknown kill switch 'nope'"):
        switches.trip("nope", "x", 0.0)
    with pytest.raises(KeyError, match="unknown kill switch 'nope'"):
        switches.clear("nope")
    with pytest.raises(KeyError, match="unknown kill switch 'nope'"):
        switches.is_tripped("nope")


async def test_wait_clear_returns_at_once_when_nothing_is_tripped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    switches = KillSwitches(SWITCHES)
    switches.trip("resolver", "x", 0.0)
    with trio.fail_after(BOUND):
        await switches.wait_clear(["blocklist", "port25"])
        await switches.wait_clear([])
    assert trio.current_time() == 0.0
    with pytest.raises(KeyError):
        await switches.wait_clear(["nope"])


async def test_wait_clear_is_a_checkpoint(autojump_clock: trio.testing.MockClock) -> None:
    switches = KillSwitches(SWITCHES)
    with trio.CancelScope() as scope:
        scope.cancel()
        await switches.wait_clear(["port25"])
    assert scope.cancelled_caught


async def test_wait_clear_waits_for_all(autojump_clock: trio.testing.MockClock) -> None:
    switches = KillSwitches(SWITCHES)
    switches.trip("port25", "timeouts", 0.0)
    switches.trip("blocklist", "5.7.1", 0.0)
    returned: list[float] = []

    async def waiter(names: list[str]) -> None:
        await switches.wait_clear(names)
        returned.append(trio.current_time())

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, ["port25", "blocklist"])
            nursery.start_soon(waiter, ["port25"])
            await trio.sleep(5.0)
            switches.clear("blocklist")
            await trio.sleep(5.0)
            assert returned == []
            switches.clear("port25")
    assert returned == [10.0, 10.0]


async def test_wait_clear_waits_again_for_a_switch_tripped_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    switches = KillSwitches(SWITCHES)
    switches.trip("port25", "timeouts", 0.0)
    switches.trip("blocklist", "5.7.1", 0.0)
    returned: list[float] = []

    async def waiter() -> None:
        await switches.wait_clear(iter(["blocklist", "port25"]))  # any iterable, once
        returned.append(trio.current_time())

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(5.0)
            switches.clear("port25")
            await trio.sleep(1.0)
            switches.trip("port25", "timeouts again", trio.current_time())
            await trio.sleep(1.0)
            switches.clear("blocklist")
            await trio.sleep(2.0)
            assert returned == []
            switches.clear("port25")
    assert returned == [9.0]
    assert switches.statistics().switches["port25"] == SwitchStatistics(
        action="halt_smtp", tripped=False, since=None, reason=None, trips=2
    )


async def test_clear_then_trip_in_one_step_keeps_waiters_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Cleared and tripped again before the waiter runs: it must not slip through.
    switches = KillSwitches(SWITCHES)
    switches.trip("resolver", "SERVFAIL", 0.0)
    returned: list[float] = []

    async def waiter() -> None:
        await switches.wait_clear(["resolver"])
        returned.append(trio.current_time())

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(1.0)
            switches.clear("resolver")
            switches.trip("resolver", "SERVFAIL again", 1.0)
            await trio.sleep(2.0)
            assert returned == []
            switches.clear("resolver")
    assert returned == [3.0]
