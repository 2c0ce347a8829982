"""The Kafka clients' background tasks watched, a dead client stopped, its replacement retried."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError

from bridge.sink import clienttasks
from bridge.sink.clienttasks import (
    REPLACE_ATTEMPTS,
    consumer_died,
    producer_died,
    start_client,
    stop_consumer,
    stop_dead,
)
from tests.polling import until
from tests.unit.sink.fakes import FakeProducer, RetryingConsumer


@pytest.mark.usefixtures("fake_producer")
async def test_a_stopped_dead_client_logs_its_tasks_error_no_second_time() -> None:
    # Its replacement logged the death and its cause; asyncio would log the error of a task
    # nobody retrieved again, traceback and all, whenever the task is garbage-collected.
    async def stop_a_dead_producer() -> None:
        producer = FakeProducer()
        await producer.start()
        producer.kill()
        # The same reset killed its metadata task too: one death is reported, not both.
        producer.client._sync_task.set_exception(RuntimeError("the handler is closed"))
        await until(lambda: producer_died(producer) is not None)
        await stop_dead(producer, 1.0)

    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        await stop_a_dead_producer()
        FakeProducer.made.clear()
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert unretrieved == []


async def test_a_cancelled_error_from_inside_a_consumers_stop_does_not_end_the_caller() -> None:
    consumer = RetryingConsumer()
    await stop_consumer(consumer)
    assert consumer._client.closed  # what the cut stop left open is closed after all
    [fetch] = consumer._fetcher._pending_tasks
    await asyncio.sleep(0)
    assert fetch.cancelled()  # and the other brokers' fetches do not run on


async def test_a_caller_cancelled_while_a_consumer_stops_is_cancelled_with_its_stop() -> None:
    consumer = RetryingConsumer(stop_takes=30.0)
    caller = asyncio.create_task(stop_consumer(consumer))
    await until(lambda: consumer.stopping is not None)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert consumer.stopping is not None
    assert consumer.stopping.cancelled()


class Starting:
    """A client's start that takes `takes` s (or fails), and its undo, both recorded."""

    def __init__(self, takes: float, fails: Exception | None = None) -> None:
        self.takes = takes
        self.fails = fails
        self.began = asyncio.Event()
        self.finished = False
        self.undone = False

    async def start(self) -> None:
        self.began.set()
        await asyncio.sleep(self.takes)
        if self.fails is not None:
            raise self.fails
        self.finished = True

    async def undo(self) -> None:
        self.undone = True


async def test_a_start_whose_caller_is_cancelled_finishes_then_is_undone() -> None:
    # aiokafka's bootstrap cut short in its metadata request drops that connection unclosed.
    client = Starting(takes=0.2)
    caller = asyncio.create_task(start_client(client.start, client.undo))
    await client.began.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert (client.finished, client.undone) == (True, True)


async def test_a_start_still_running_after_the_settle_time_is_cancelled_and_undone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clienttasks, "START_SETTLE_SECONDS", 0.05)
    client = Starting(takes=30.0)
    caller = asyncio.create_task(start_client(client.start, client.undo))
    await client.began.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert (client.finished, client.undone) == (False, True)


async def test_a_failed_start_is_undone_and_its_error_raised() -> None:
    client = Starting(takes=0.0, fails=KafkaConnectionError("refused"))
    with pytest.raises(KafkaConnectionError):
        await start_client(client.start, client.undo)
    assert client.undone


def test_a_client_without_the_expected_attributes_counts_as_alive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Changed:
        pass

    with caplog.at_level(logging.WARNING, logger="bridge.sink.clienttasks"):
        assert producer_died(Changed()) is None
        assert producer_died(Changed()) is None
        assert consumer_died(Changed()) is None
    warned = [r for r in caplog.records if "cannot watch" in r.getMessage()]
    # Once per attribute: the producer's sender and metadata tasks, the consumer's three.
    assert len(warned) == 5


async def test_a_replacement_reports_dead_only_after_refusals_in_a_row_never_for_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    replacement = clienttasks.Replacement("test client")
    outcomes: list[BaseException | str] = [
        *(KafkaConnectionError("unreachable") for _ in range(REPLACE_ATTEMPTS * 2)),
        *(KafkaError("refused") for _ in range(REPLACE_ATTEMPTS)),
        "started",
    ]
    seen_alive: list[bool] = []

    async def start() -> str:
        seen_alive.append(replacement.alive)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert await replacement.start(start) == "started"
    assert seen_alive == [True] * (REPLACE_ATTEMPTS * 3) + [False]  # dead after 5 refusals
    assert replacement.alive  # and alive again once one started
    assert await replacement.start(start, running=lambda: False) is None
