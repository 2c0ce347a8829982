"""The followers' key gate: one ERROR per refusal of the key, and waiters woken as it changes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.sources.calllog.keygate import KeyGate
from bridge.sources.reconnect import ReconnectPolicy
from tests.polling import until


class Clock:
    """The gate's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def gate_at(clock: Clock) -> KeyGate:
    # No jitter (the top of each range): the key refused waits 5 s, then 10 s, ... up to 30 s.
    return KeyGate(ReconnectPolicy(1.0, 30.0, 60.0, rand=lambda _low, high: high), clock)


def lines(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(start)]


async def test_one_error_per_opening_and_a_warning_when_the_key_is_accepted_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.keygate")
    clock = Clock()
    gate = gate_at(clock)
    for call in ("CA_1", "CA_2", "CA_3"):  # requests out when the key was refused
        gate.refused(call, 401)
    clock.now = 5.0
    assert await gate.enter() == (1, False)  # the probe
    gate.refused("CA_1", 401)
    clock.now = 15.0
    assert await gate.enter() == (2, False)
    gate.accepted()
    gate.accepted()  # others' answers after it closed: nothing more to say
    gate.refused("CA_4", 401)  # a new opening

    refusals = lines(caplog, "Pinecall refuses the API key")
    assert [r.levelno for r in refusals] == [logging.ERROR, logging.ERROR]
    assert [r.__dict__["call"] for r in refusals] == ["CA_1", "CA_4"]
    assert [r.levelno for r in lines(caplog, "the API key is still refused")] == [logging.INFO]
    accepted = lines(caplog, "Pinecall accepts the API key again")
    assert [r.levelno for r in accepted] == [logging.WARNING]
    assert accepted[0].__dict__["refused_for_s"] == 15.0


async def test_a_closed_gate_lets_every_request_go_without_waiting() -> None:
    gate = gate_at(Clock())
    assert [await gate.enter() for _ in range(3)] == [(None, False)] * 3


async def waiting_on_the_probe(gate: KeyGate) -> asyncio.Task[tuple[int | None, bool]]:
    """A follower come to the gate while a probe is out: it waits for as long as that takes."""
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)  # its first look at the gate
    assert not waiter.done()
    return waiter


async def probe_out(clock: Clock) -> KeyGate:
    """A gate the key was refused at 0 s, whose first probe went at 5 s."""
    gate = gate_at(clock)
    gate.refused("CA_1", 401)
    clock.now = 5.0
    assert await gate.enter() == (1, False)
    return gate


async def test_waiters_are_woken_when_the_probe_is_refused_and_when_it_is_accepted() -> None:
    clock = Clock()
    gate = await probe_out(clock)
    waiter = await waiting_on_the_probe(gate)
    gate.refused("CA_1", 401)  # the probe refused: 10 s more
    clock.now = 15.0
    await until(waiter.done, what="the waiter woken by the refused probe")
    assert waiter.result() == (2, True)  # it probes next, once the backoff is over

    waiter = await waiting_on_the_probe(gate)
    gate.accepted()
    await until(waiter.done, what="the waiter woken by the accepted key")
    assert waiter.result() == (None, True)


async def test_a_probe_ending_without_a_verdict_lets_another_probe_after_a_backoff() -> None:
    clock = Clock()
    gate = await probe_out(clock)
    waiter = await waiting_on_the_probe(gate)
    gate.probe_over(1)  # an outage or a stop: no word on the key
    clock.now = 9.9  # the backoff (5 s) is not over: woken, it waits on
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.now = 10.0
    await until(waiter.done, what="the next probe after the backoff")
    assert waiter.result() == (2, True)


async def test_it_holds_from_the_refusal_of_the_key_until_it_is_accepted_again() -> None:
    clock = Clock()
    gate = gate_at(clock)
    held = [gate.holding]
    gate.refused("CA_1", 401)
    held.append(gate.holding)
    clock.now = 5.0
    assert await gate.enter() == (1, False)
    held.append(gate.holding)  # the probe is out: no verdict yet
    gate.accepted()
    held.append(gate.holding)
    assert held == [False, True, True, False]


async def test_a_reloaded_key_lets_a_follower_waiting_out_a_refusal_try_it_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.keygate")
    clock = Clock()
    gate = gate_at(clock)
    gate.refused("CA_1", 401)  # open: the next probe in 5 s
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.key_changed()
    await until(waiter.done, what="the waiter let through by the new key")
    assert waiter.result() == (1, True)  # the probe, with the new key, long before 5 s
    assert lines(caplog, "the API key was reloaded")


async def test_a_reloaded_key_changes_nothing_while_the_key_is_accepted_or_probed() -> None:
    clock = Clock()
    gate = gate_at(clock)
    gate.key_changed()  # closed: every request goes anyway
    assert await gate.enter() == (None, False)
    gate = await probe_out(clock)
    waiter = await waiting_on_the_probe(gate)
    gate.key_changed()  # the probe out says; a second one would only double it
    await asyncio.sleep(0)
    assert not waiter.done()
    waiter.cancel()
