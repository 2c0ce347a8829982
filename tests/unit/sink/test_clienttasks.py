"""The Kafka clients' background tasks watched, a dead client stopped, its replacement retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import aiokafka.client
import pytest
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import BrokerMetadata
from aiokafka.conn import CloseReason
from aiokafka.errors import KafkaConnectionError, KafkaError, RequestTimedOutError

from bridge.sink import clienttasks, connectsetup
from bridge.sink.clienttasks import (
    REPLACE_ATTEMPTS,
    Listed,
    close_now,
    consumer_died,
    fail_all_quietly,
    fail_pending,
    producer_died,
    start_client,
    stop_consumer,
    stop_dead,
    stop_producer,
)
from bridge.sink.drain import drain_whole_brokers
from tests.loopreports import loop_reports
from tests.polling import until
from tests.unit.sink.fakes import (
    FakeConnection,
    FakeProducer,
    HeldAnswers,
    HoldingProducer,
    RetryingConsumer,
    StuckProducer,
    unstarted_producer,
)


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

    with loop_reports() as unretrieved:
        await stop_a_dead_producer()
        FakeProducer.made.clear()
    assert unretrieved == []


async def test_a_cancelled_error_from_inside_a_consumers_stop_does_not_end_the_caller() -> None:
    consumer = RetryingConsumer()
    await stop_consumer(consumer)
    assert consumer._client.closed  # what the cut stop left open is closed after all
    assert consumer.fetch.cancelled()  # and the other brokers' fetches do not run on


async def cancel_while_stopping(
    stop: Coroutine[Any, Any, None], consumer: RetryingConsumer
) -> None:
    """Run `stop` of `consumer` in a task cancelled once the consumer's stop began."""
    caller = asyncio.create_task(stop)
    await until(lambda: consumer.stopping is not None)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_a_consumers_stop_whose_caller_is_cancelled_runs_on_to_its_end() -> None:
    # Cut at once, it might not have left the group nor closed its connections.
    consumer = RetryingConsumer(stop_takes=0.2, retrying=False)
    await cancel_while_stopping(stop_consumer(consumer), consumer)
    assert consumer.stopping is not None
    assert not consumer.stopping.cancelled()
    assert consumer._client.closed


@pytest.mark.parametrize("stop", [stop_consumer, lambda c: stop_dead(c, 30.0)])
async def test_a_stop_still_running_after_the_settle_time_is_cut_and_leaves_nothing_open(
    stop: Callable[[Any], Coroutine[Any, Any, None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clienttasks, "STOP_SETTLE_SECONDS", 0.05)
    consumer = RetryingConsumer(stop_takes=30.0)
    await cancel_while_stopping(stop(consumer), consumer)
    assert consumer.stopping is not None
    assert consumer.stopping.cancelled()
    assert consumer._client.closed
    assert consumer.fetch.cancelled()


async def test_a_producers_stop_whose_caller_is_cancelled_is_cut_at_once() -> None:
    # No settle time: the caller's bound is on the flush, and a second more would not finish it.
    client = RetryingConsumer(stop_takes=0.3, retrying=False)
    await cancel_while_stopping(stop_producer(client), client)
    assert client.stopping is not None
    assert client.stopping.cancelled()
    assert client._client.closed


async def test_a_dead_producers_stop_cut_by_its_bound_leaves_no_pending_sender() -> None:
    producer = StuckProducer()
    await stop_dead(producer, 0.05)
    assert producer.client_closed
    assert producer._sender.sender_task.cancelled()


async def test_a_dead_consumers_stop_cut_by_its_bound_leaves_nothing_open() -> None:
    consumer = RetryingConsumer(stop_takes=30.0)
    await stop_dead(consumer, 0.05)
    assert consumer._client.closed
    assert consumer.fetch.cancelled()


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


@pytest.mark.parametrize(
    ("takes", "settle", "finished"),
    [
        # aiokafka's bootstrap cut short in its metadata request drops that connection unclosed.
        (0.2, 1.0, True),
        (30.0, 0.05, False),  # still running after the settle time: cancelled
    ],
)
async def test_a_start_whose_caller_is_cancelled_settles_then_is_undone(
    takes: float, settle: float, finished: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clienttasks, "START_SETTLE_SECONDS", settle)
    client = Starting(takes=takes)
    caller = asyncio.create_task(start_client(client, client.start, client.undo))
    await client.began.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert (client.finished, client.undone) == (finished, True)


class _Unanswered(FakeConnection):
    """A connection whose requests are never answered: a broker held up, or a starved loop."""

    def __init__(self, asked: asyncio.Event) -> None:
        super().__init__()
        self._asked = asked

    async def send(self, request: object, expect_response: bool = True) -> object:
        self._asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_start_cut_in_its_bootstraps_metadata_request_leaves_no_connection_open(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A loaded CI node's starved loop kept a consumer's bootstrap past the settle time: cut in
    # its metadata request, aiokafka dropped that connection unclosed, and asyncio logged
    # "Unclosed AIOKafkaConnection" at ERROR (the scaling test's flapping replicas).
    monkeypatch.setattr(clienttasks, "START_SETTLE_SECONDS", 0.05)
    asked = asyncio.Event()
    made: list[_Unanswered] = []

    async def create_conn(host: str, port: int, **_: object) -> _Unanswered:
        made.append(conn := _Unanswered(asked))
        return conn

    wrapped = connectsetup.bounded(create_conn, connectsetup.AuthenticationOutcome())
    monkeypatch.setattr(aiokafka.client, "create_conn", wrapped)  # as connectsetup.install does
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")
    caller = asyncio.create_task(start_client(client, client.bootstrap, client.close))
    await asked.wait()  # aiokafka's bootstrap waits for its metadata answer
    caller.cancel()
    with (
        caplog.at_level(logging.INFO, logger="bridge.sink.clienttasks"),
        pytest.raises(asyncio.CancelledError),
    ):
        await caller
    assert [conn.connected() for conn in made] == [False]
    said = [r.__dict__ for r in caplog.records if "cut start" in r.getMessage()]
    assert [(r["client"], r["connections"]) for r in said] == [("AIOKafkaClient", 1)]


async def test_a_started_clients_later_connections_are_left_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The tally holds a start's connections only until it ends: the client's tasks run on.
    made: list[FakeConnection] = []

    async def create_conn(host: str, port: int, **_: object) -> FakeConnection:
        made.append(conn := FakeConnection())
        return conn

    wrapped = connectsetup.bounded(create_conn, connectsetup.AuthenticationOutcome())
    later: list[asyncio.Task[connectsetup.ConnectionTally | None]] = []

    async def start() -> None:
        await wrapped("127.0.0.1", 9)

        async def connect_later() -> connectsetup.ConnectionTally | None:
            await asyncio.sleep(0.01)
            await wrapped("127.0.0.1", 9)
            return connectsetup._TALLY.get()  # inherited from the start's task

        later.append(asyncio.create_task(connect_later()))

    await start_client(SimpleNamespace(), start, _never_undone)
    tally = await later[0]
    assert tally is not None
    assert tally.close_open() == 0  # it holds none: they are the client's own
    assert [conn.connected() for conn in made] == [True, True]


async def _never_undone() -> None:
    raise AssertionError("a start that succeeded is not undone")


async def test_a_failed_start_is_undone_and_its_error_raised() -> None:
    client = Starting(takes=0.0, fails=KafkaConnectionError("refused"))
    with pytest.raises(KafkaConnectionError):
        await start_client(client, client.start, client.undo)
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


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replacement's waits between tries, skipped."""

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", no_sleep)


def scripted(
    outcomes: list[BaseException | str], before: Callable[[], None] = lambda: None
) -> Callable[[], Coroutine[Any, Any, str]]:
    """A replacement's start that raises or returns each of `outcomes` in turn (`before` each)."""

    async def start() -> str:
        before()
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return start


@pytest.mark.usefixtures("no_backoff")
async def test_a_replacement_is_dead_after_refusals_in_a_row_never_after_an_outage() -> None:
    replacement = clienttasks.Replacement("test client")
    outcomes: list[BaseException | str] = [
        *(KafkaConnectionError("unreachable") for _ in range(REPLACE_ATTEMPTS * 2)),
        *(KafkaError("refused") for _ in range(REPLACE_ATTEMPTS)),
        "started",
    ]
    seen_alive: list[bool] = []
    start = scripted(outcomes, lambda: seen_alive.append(replacement.alive))

    assert await replacement.start(start) == "started"
    assert seen_alive == [True] * (REPLACE_ATTEMPTS * 3) + [False]  # dead after 5 refusals
    assert replacement.alive  # and alive again once one started
    assert await replacement.start(start, running=lambda: False) is None


async def test_a_producers_stop_cut_with_records_held_leaves_no_task_pending() -> None:
    # aiokafka's stop awaits its accumulator's close in a task nothing refers to: with the broker
    # unresponsive, that task waited for ever on records no sender would answer, and asyncio
    # logged "Task was destroyed but it is pending!" when it was collected.
    with loop_reports() as unread:
        producer = HoldingProducer()
        await producer.hold()
        caller = asyncio.create_task(stop_producer(producer))
        await until(lambda: producer.closing_tasks() != [])
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert producer.closing_tasks() == []
        assert producer.client.closed
    assert unread == []


async def test_a_start_that_ignores_its_cancellation_holds_its_undo_only_briefly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wait after the cancel was unbounded: a client unwinding slowly held the whole stop.
    monkeypatch.setattr(clienttasks, "START_SETTLE_SECONDS", 0.05)
    monkeypatch.setattr(clienttasks, "CUT_SECONDS", 0.05)
    starting = Starting(takes=60.0)
    release = asyncio.Event()

    async def start() -> None:
        try:
            await starting.start()
        except asyncio.CancelledError:
            await release.wait()  # a cleanup that does not end
            raise

    caller = asyncio.create_task(start_client(starting, start, starting.undo))
    await starting.began.wait()
    caller.cancel()
    try:
        done, _ = await asyncio.wait({caller}, timeout=30)  # only a guard against a hang
        assert done == {caller}, "the undo waited on the cancelled start for ever"
        assert starting.undone
    finally:
        release.set()
        await asyncio.gather(caller, return_exceptions=True)


class FrozenConsumer(RetryingConsumer):
    """A consumer whose start fails (or is still running) and whose stop never ends: a frozen
    broker."""

    def __init__(self, start_takes: float) -> None:
        super().__init__(stop_takes=60.0, retrying=False)
        self.starting = Starting(takes=start_takes, fails=KafkaConnectionError("frozen"))

    async def start(self) -> None:
        await self.starting.start()


@pytest.mark.parametrize("cancelled", [False, True])
async def test_an_undo_that_never_ends_is_cut_at_its_bound_and_the_start_error_raised(
    cancelled: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The undo was awaited unbounded: a stop against a frozen broker held the partition start,
    # the stage's restart or the whole shutdown for as long as aiokafka's timeouts allowed.
    monkeypatch.setattr(clienttasks, "START_SETTLE_SECONDS", 0.05)
    monkeypatch.setattr(clienttasks, "UNDO_SECONDS", 0.1)
    monkeypatch.setattr(clienttasks, "CUT_SECONDS", 0.05)
    consumer = FrozenConsumer(start_takes=60.0 if cancelled else 0.0)
    with caplog.at_level(logging.WARNING, logger="bridge.sink.clienttasks"):
        caller = asyncio.create_task(start_client(consumer, consumer.start, consumer.stop))
        await consumer.starting.began.wait()
        if cancelled:
            caller.cancel()
        done, _ = await asyncio.wait({caller}, timeout=5)  # well past the bound, under the stop
        assert done == {caller}, "the undo was not cut at its bound"
    with pytest.raises(asyncio.CancelledError if cancelled else KafkaConnectionError):
        caller.result()
    assert consumer.stopping is not None
    assert consumer.stopping.cancelled()
    assert consumer._client.closed  # cut short: nothing left open
    assert consumer.fetch.cancelled()
    warned = [r for r in caplog.records if "not undone in time" in r.getMessage()]
    assert [r.__dict__["client"] for r in warned] == ["FrozenConsumer"]
    # A cancelled start's settle (0.05 s at least: the start never ends) took its share.
    within = warned[0].__dict__["within_s"]
    assert within <= 0.05 if cancelled else within == 0.1


async def test_a_start_cut_against_a_frozen_broker_ends_within_a_cut_stops_overrun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The undo had a second of its own after the settle's: a start cut at a stage's deadline ran
    # a second past the reserve the shutdown keeps for cut stops (bridge/stopbudget.py).
    monkeypatch.setattr(clienttasks, "CUT_SECONDS", 0.05)
    consumer = FrozenConsumer(start_takes=60.0)
    loop = asyncio.get_running_loop()
    caller = asyncio.create_task(start_client(consumer, consumer.start, consumer.stop))
    await consumer.starting.began.wait()
    cut_at = loop.time()
    caller.cancel()
    done, _ = await asyncio.wait({caller}, timeout=10)  # only a guard against a hang
    assert done == {caller}
    # The settle and the undo share STOP_SETTLE_SECONDS (1 s here, 2 s before); the margin is
    # for a loaded box, under the second the undo took on its own.
    assert loop.time() - cut_at < clienttasks.STOP_SETTLE_SECONDS + 3 * 0.05 + 0.6
    assert consumer.stopping is not None  # the undo was begun: the consumer counts closed
    assert consumer._client.closed


async def test_only_open_connections_to_brokers_the_metadata_left_out_are_closed() -> None:
    # aiokafka's own client: the attributes read are its.
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")
    connections = {
        (1, 0): FakeConnection(),
        (2, 0): FakeConnection(),  # fenced: left out
        (2, 1): FakeConnection(),  # the same broker as a coordinator
        (4, 0): FakeConnection(connected=False),  # left out, closed already
        ("bootstrap", 0): FakeConnection(),
    }
    client._conns.update(connections)
    assert clienttasks.close_gone_connections(client, set()) == []  # no answer: none judged
    assert sorted(clienttasks.close_gone_connections(client, {1, 3})) == [2, 2]
    assert [key for key, conn in connections.items() if conn.connected()] == [
        (1, 0),
        ("bootstrap", 0),
    ]
    assert connections[(2, 1)].closed_for == CloseReason.CONNECTION_BROKEN
    client._conns.clear()  # stand-ins: nothing for its close to wait for
    await client.close()


async def test_brokers_the_metadata_left_out_are_dropped_from_a_clients_own_metadata() -> None:
    # aiokafka's own client, as a consumer's whose metadata is older than the answer `listed`.
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")
    client.cluster._brokers = {n: BrokerMetadata(n, f"broker{n}", 9092, None) for n in (1, 2, 3)}
    assert clienttasks.forget_gone_brokers(client, set()) == []  # no answer: none judged
    assert clienttasks.forget_gone_brokers(client, {1, 3, 4}) == [2]
    assert sorted(b.nodeId for b in client.cluster.brokers()) == [1, 3]
    # Its FindCoordinator and metadata updates pick among these: never the vanished broker.
    assert {client.get_random_node() for _ in range(50)} == {1, 3}
    assert clienttasks.forget_gone_brokers(client, {1, 3}) == []
    assert clienttasks.forget_gone_brokers(object(), {1}) == []  # aiokafka changed: left alone
    await client.close()


async def test_gone_brokers_are_forgotten_by_every_client_before_any_connection_closes() -> None:
    # A closed connection fails the group's heartbeat at once, and the lookup that follows picks
    # a broker from the client's metadata: by then no client may list the vanished one.
    clients = [AIOKafkaClient(bootstrap_servers="127.0.0.1:9") for _ in range(2)]
    listed_when_closed: list[set[int]] = []

    class Watching(FakeConnection):
        def close(self, reason: object = None) -> None:
            listed_when_closed.append({b.nodeId for c in clients for b in c.cluster.brokers()})
            super().close(reason)

    for n, client in enumerate(clients):
        client.cluster._brokers = {b: BrokerMetadata(b, f"broker{b}", 9092, None) for b in (1, 2)}
        client._conns[(2 + n, 0)] = Watching()
    # The first client holds a connection to broker 2 (gone), the second one to 3 (gone, not in
    # its metadata any more): both reported, each once.
    assert clienttasks.drop_gone_brokers(clients, {1}) == [2, 3]
    assert listed_when_closed == [{1}, {1}]
    assert clienttasks.drop_gone_brokers(clients, {1}) == []
    assert clienttasks.drop_gone_brokers(clients, set()) == []  # no answer: none judged
    for client in clients:
        client._conns.clear()
        await client.close()


def test_a_client_without_visible_connections_is_left_alone_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clienttasks._warned.discard("AIOKafkaClient._conns")
    with caplog.at_level(logging.WARNING):
        assert clienttasks.close_gone_connections(object(), {1}) == []
        assert clienttasks.close_gone_connections(object(), {1}) == []
    assert [r.attribute for r in caplog.records] == ["AIOKafkaClient._conns"]  # type: ignore[attr-defined]


async def test_the_brokers_are_asked_together_and_the_first_answer_counts() -> None:
    # Broker 1 went silent: asked one at a time, as aiokafka does, it held the answer for the
    # request timeout.
    silent: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def send(node: int, request: object) -> Any:
        if node == 1:
            return await silent
        return SimpleNamespace(brokers=[(2, "broker2", 9092, None), (3, "broker3", 9092, None)])

    client = SimpleNamespace(
        _conns={
            (1, 0): FakeConnection(),
            (2, 0): FakeConnection(),
            (5, 0): FakeConnection(connected=False),  # not asked: a connect could hang
        },
        send=send,
    )
    assert await asyncio.wait_for(clienttasks.listed_brokers(client, 5.0), 1.0) == {2, 3}
    await asyncio.sleep(0)
    assert silent.cancelled()
    assert await clienttasks.listed_brokers(SimpleNamespace(_conns={}, send=send), 0.1) is None


async def test_a_probe_says_whether_aiokafkas_own_update_answered_or_a_direct_ask() -> None:
    client = FakeProducer().client
    client._conns[(1, 0)] = FakeConnection()
    client.cluster.listed = {1, 2}
    assert await clienttasks.probe_metadata(client, 1.0) == Listed({1, 2}, updated=True)
    # An update held by a broker gone silent: the brokers asked directly answer, in what is left.
    client.held = True
    started = asyncio.get_running_loop().time()
    assert await clienttasks.probe_metadata(client, 1.0) == Listed({1, 2}, updated=False)
    assert asyncio.get_running_loop().time() - started < 0.9
    client.silent = {1}
    assert await clienttasks.probe_metadata(client, 0.2) is None


def test_a_fresh_client_bootstraps_from_the_brokers_listed_else_from_the_settings() -> None:
    configured = ["k1:9092", "k2:9092", "k3:9092"]
    # k2 fenced (its host vanished): no longer listed, so never tried first.
    listed = [("k3", 9092), ("k1", 9092), ("k1", 9092)]
    assert clienttasks.bootstrap_servers(configured, listed) == ["k1:9092", "k3:9092"]
    assert clienttasks.bootstrap_servers(configured, [("::1", 9093)]) == ["[::1]:9093"]
    assert clienttasks.bootstrap_servers(configured, []) == configured  # no metadata yet


async def test_options_take_the_brokers_of_the_first_client_with_metadata() -> None:
    # aiokafka's own clients: the attributes read are theirs.
    bare, known = (
        AIOKafkaClient(bootstrap_servers="k1:9092"),
        AIOKafkaClient(bootstrap_servers="k1:9092"),
    )
    known.cluster._brokers = {n: BrokerMetadata(n, f"k{n}", 9092, None) for n in (1, 3)}
    options = {"bootstrap_servers": ["k1:9092", "k2:9092", "k3:9092"], "client_id": "bridge"}
    fresh = clienttasks.bootstrapped(options, None, bare, known)
    assert fresh == {"bootstrap_servers": ["k1:9092", "k3:9092"], "client_id": "bridge"}
    assert options["bootstrap_servers"] == ["k1:9092", "k2:9092", "k3:9092"]  # not changed
    assert clienttasks.bootstrapped(options, None, bare) == options
    assert clienttasks.bootstrapped({"bootstrap_servers": "k1:9092"}, bare) == {
        "bootstrap_servers": ["k1:9092"]
    }
    await bare.close()
    await known.close()


async def test_failing_a_dead_producers_records_leaves_asyncio_nothing_to_log_at_error() -> None:
    # The broker's disk filled, so its batches were retried (KafkaStorageError, then the
    # connection), and the producer was replaced: aiokafka's failure of a batch put back for a
    # retry raised KeyError in its own callback, and the drain waiters nobody awaits failed
    # unread, both logged by asyncio at ERROR with no word of the cause.
    with loop_reports() as unread:
        producer = unstarted_producer()
        accumulator = producer._message_accumulator
        retried, sent, queued = (TopicPartition("t", p) for p in range(3))
        delivered = [await accumulator.add_message(tp, None, b"v", 1) for tp in (retried, sent)]
        accumulator.reenqueue(accumulator._pop_batch(retried))  # a retriable answer
        accumulator._pop_batch(sent)  # in flight
        delivered.append(await accumulator.add_message(queued, None, b"v", 1))
        fail_pending(producer, KafkaConnectionError("the Kafka producer was replaced"))
        assert all(isinstance(d.exception(), KafkaConnectionError) for d in delivered)
        await asyncio.sleep(0)
        producer._closed = True  # never started: nothing to stop
        del producer, accumulator, delivered
    assert unread == []


async def test_a_producer_whose_sender_died_is_closed_leaving_asyncio_nothing_to_log() -> None:
    # A dedup producer's sender died as the broker halted on its full disk (aiokafka: "Unexpected
    # error during batch delivery") and failed every batch itself; the producer, closed
    # (close_now), was collected later with its batches' failures unread: three ERROR lines.
    with loop_reports() as unread:
        producer = unstarted_producer()
        accumulator = producer._message_accumulator
        delivered = [
            await accumulator.add_message(TopicPartition("t", p), None, b"v", 1) for p in range(2)
        ]
        died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        died.set_exception(KafkaError("Unexpected error during batch delivery"))
        producer._sender._fail_all(died)  # what aiokafka's sender task does as it ends
        assert all(isinstance(d.exception(), KafkaError) for d in delivered)
        await close_now(producer)
        del producer, accumulator, delivered, died
    assert unread == []


async def test_a_sender_dying_with_a_retried_batch_leaves_asyncio_nothing_to_log() -> None:
    # The broker halted on its full disk: a batch refused (KafkaStorageError) was put back for a
    # retry, then the sender died (a reset connection, aiokafka#1038). aiokafka's own failing of
    # every batch, run as the sender ends and before the bridge sees it, raised KeyError in the
    # batch's callback, which asyncio logged at ERROR: fail_pending comes too late for that.
    with loop_reports() as unread:
        producer = unstarted_producer()
        assert fail_all_quietly(producer)
        accumulator = producer._message_accumulator
        retried = TopicPartition("t", 0)
        delivered = await accumulator.add_message(retried, None, b"v", 1)
        accumulator.reenqueue(accumulator._pop_batch(retried))  # a retriable answer
        died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        died.set_exception(KafkaError("Unexpected error during batch delivery"))
        producer._sender._fail_all(died)  # what aiokafka's sender task does as it ends
        assert isinstance(delivered.exception(), KafkaError)
        await asyncio.sleep(0)  # the batch's callback
        await close_now(producer)
        del producer, accumulator, delivered, died
    assert unread == []


@pytest.mark.usefixtures("no_backoff")
async def test_a_replacements_tries_through_an_outage_are_said_once_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A dedup consumer's replacement through a long Kafka outage: its backoff grows to 30 s, and
    # each try said "could not replace ... yet", a line every 30 s for the whole outage (the
    # ingest producer's tries are said once each 5 minutes).
    replacement = clienttasks.Replacement("test client")
    outcomes: list[BaseException | str] = [
        *(KafkaConnectionError("unreachable") for _ in range(20)),
        "started",
    ]
    start = scripted(outcomes)

    with caplog.at_level(logging.INFO, logger="bridge.sink.clienttasks"):
        assert await replacement.start(start) == "started"
        outcomes[:] = [KafkaConnectionError("unreachable"), "started"]  # the next outage
        assert await replacement.start(start) == "started"
    said = [
        r.getMessage().split(" in the last ")[0]  # a summary's span cut off
        for r in caplog.records
        if "replace" in r.getMessage()
    ]
    assert said == [
        "could not replace the test client yet",
        "could not replace the test client yet (KafkaConnectionError): 19 more like this",
        "could not replace the test client yet",  # a new outage's first try, said at once
    ]


async def test_failing_a_wedged_producers_records_leaves_its_running_sender_nothing_to_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A record answered OutOfOrderSequenceNumber wedges the ingest producer while its sender runs
    # on. Replaced, its queued batches were failed, and a drain before its stop cancelled the
    # sender (a linger ending, an answer arriving) took one: aiokafka asserts that a batch given
    # sequence numbers is not drained yet, and the sender died of it ("Unexpected error in sender
    # routine", a traceback).
    producer = unstarted_producer(enable_idempotence=True, linger_ms=0)
    accumulator = producer._message_accumulator
    assert drain_whole_brokers(producer)  # as the sink builds it
    producer._txn_manager.set_pid_and_epoch(1, 0)  # started
    monkeypatch.setattr(accumulator._cluster, "leader_for_partition", lambda _tp: 1)
    delivered = await accumulator.add_message(TopicPartition("t", 0), None, b"v", 1)
    fail_pending(producer, KafkaConnectionError("the Kafka producer was replaced"))
    assert isinstance(delivered.exception(), KafkaConnectionError)
    assert accumulator.drain_by_nodes(ignore_nodes=set()) == ({}, False)
    producer._closed = True  # never started: nothing to stop


@pytest.mark.parametrize("answered", ["before the stop", "during the stop"])
async def test_a_wedged_producers_failed_batch_answered_retriable_is_not_put_back(
    answered: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A wedged producer's sender runs on while it is replaced: fail_pending failed its batch in
    # flight, and the batch's callback took it out of the pending set. A retriable answer then
    # had aiokafka put it back (reenqueue): KeyError, the sender dead of it ("Unexpected error
    # in sender routine", a traceback) or the stop raising it, and the failed batch queued again.
    broker = HeldAnswers(RequestTimedOutError())
    producer = broker.producer
    accumulator = producer._message_accumulator
    with loop_reports() as unread, caplog.at_level(logging.WARNING):
        broker.start()
        delivered = await accumulator.add_message(TopicPartition("t", 0), None, b"v", 1)
        await broker.sent.wait()
        fail_pending(producer, KafkaConnectionError("the Kafka producer was replaced"))
        if answered == "before the stop":
            broker.answer()
            await asyncio.sleep(producer._sender._retry_backoff * 2)  # the answer's backoff
        else:
            asyncio.get_running_loop().call_later(0.05, broker.answer)
        await stop_dead(producer, 1.0)
        sender = producer._sender.sender_task
        assert sender.cancelled() or sender.exception() is None  # stopped, not dead of KeyError
        # Its record failed once, for its source to retry, and not queued to be sent again.
        assert isinstance(delivered.exception(), KafkaConnectionError)
        assert not accumulator._batches
        del producer, accumulator, delivered, sender
    assert unread == []
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.WARNING] == []
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]


async def test_a_dead_senders_failed_batch_answered_retriable_is_not_put_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The sender died (a reset connection, aiokafka#1038) with a request to another broker in
    # flight, which aiokafka leaves running. Its own failing of every batch took the batch out of
    # the pending set; a retriable answer (a leader moving in the same restart) then had aiokafka
    # put it back: KeyError in that orphaned task, logged when collected, the failed batch queued
    # again. fail_pending, which stops that, comes with the replacement: too late.
    broker = HeldAnswers(RequestTimedOutError())
    producer = broker.producer
    assert fail_all_quietly(producer)
    accumulator = producer._message_accumulator
    with loop_reports() as unread, caplog.at_level(logging.WARNING):
        broker.start()
        delivered = await accumulator.add_message(TopicPartition("t", 0), None, b"v", 1)
        await broker.sent.wait()

        def dies(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("unexpected")

        accumulator.drain_by_nodes = dies
        waking = await accumulator.add_message(TopicPartition("t", 1), None, b"v", 1)
        sender = producer._sender.sender_task
        await asyncio.wait({sender})
        # Both failed as the sender died.
        assert isinstance(delivered.exception(), KafkaError)
        assert isinstance(waking.exception(), KafkaError)
        broker.answer()
        await asyncio.sleep(producer._sender._retry_backoff * 2)  # the answer's backoff
        assert not accumulator._batches.get(TopicPartition("t", 0))
        fail_pending(producer, KafkaConnectionError("the Kafka producer was replaced"))
        await stop_dead(producer, 1.0)
        del producer, accumulator, delivered, waking, sender
    # aiokafka's own callback then fails on an idempotent producer's missing transaction waiter
    # (AttributeError): its, and not this test's.
    assert [r for r in unread if "_fail_all" not in r] == []
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
