"""A dedup commit whose answer is lost: EndTxn reached the coordinator, its answer never came back.

The bridge reaches its own broker only through a Kafka-aware proxy (kafkaproxy.py) that lets one
EndTxn(COMMIT) through and cuts the connection (or holds it silent) instead of forwarding the
answer. The coordinator decides the outcome: the same process asking again, a timed-out commit
restarting its partitions, or another process taking over, with the same transactional id or
not, must all leave every acknowledged event once in the output, and nothing an uncommitted
reader would see besides. For contrast, the request itself lost: the bridge cannot tell the two
apart, the coordinator aborts it, and only its records are there for an uncommitted reader.
With every InitProducerId refused besides, the failed producer cannot be replaced: the partitions
still owned are lost at once, as `producer`. The checker reads the broker directly, over a
listener the proxy is not on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest

from bridge.dedup.transaction import LossReason
from tests.integration.conftest import (
    Broker,
    Topics,
    call_on,
    entry,
    own_broker,
    read_decided,
    read_to_end,
    until_decided,
)
from tests.integration.kafkaproxy import CommitAnswerCut
from tests.integration.replicas import Replica, post_signed, replica_env, total
from tests.metrics import sample
from tests.polling import until
from tests.sockets import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# The broker advertises the proxy, so the bridge's clients stay behind it after their bootstrap;
# its own traffic (transaction markers) and the checker use an INTERNAL listener that bypasses it.
OVERLAY = """\
listeners=PLAINTEXT://127.0.0.1:@PORT@,INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:@CONTROLLER_PORT@
advertised.listeners=PLAINTEXT://127.0.0.1:{proxy},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:@CONTROLLER_PORT@
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
"""
SEQS = 8  # events per call and batch
END_TXN_TIMEOUT = 2.0  # BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS of these bridges


@dataclass(frozen=True)
class BehindProxy:
    broker: Broker
    proxy_port: int
    direct: str  # the INTERNAL listener: the checker's way in, never cut


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BehindProxy]:
    proxy_port, internal = free_port(), free_port()
    overlay = OVERLAY.format(proxy=proxy_port, internal=internal)
    with own_broker(tmp_path_factory.mktemp("kafka-commit-cut"), overlay) as own:
        yield BehindProxy(own, proxy_port, f"127.0.0.1:{internal}")


@pytest.fixture
async def proxy(behind_proxy: BehindProxy) -> AsyncIterator[CommitAnswerCut]:
    cut = CommitAnswerCut(behind_proxy.proxy_port)
    cut.upstream = ("127.0.0.1", behind_proxy.broker.port)
    await cut.start()
    yield cut
    await cut.stop()


def batch(topics: Topics, first_seq: int, partitions: int = 3) -> dict[str, list[Any]]:
    """SEQS events of a call on each ingest partition, by call."""
    calls = [call_on(p, partitions, f"CA_{topics.group[-8:]}") for p in range(partitions)]
    return {c: [entry(s, call=c) for s in range(first_seq, first_seq + SEQS)] for c in calls}


async def deliver(
    session: aiohttp.ClientSession, url: Callable[[], str], events: dict[str, list[Any]]
) -> None:
    """Each call's events in order, each sent again until a 2xx (as Pinecall does)."""

    async def call(bodies: list[Any]) -> None:
        for body in bodies:

            async def answered(body: Any = body) -> bool:
                return await post_signed(session, url(), body) == 200

            await until(answered, 90, 0.2, f"a 2xx for {body['call']}:{body['seq']}")

    await asyncio.gather(*(call(bodies) for bodies in events.values()))


async def set_at(event: asyncio.Event) -> float:
    """When `event` is set (time.time(), as log records' `created`)."""
    await event.wait()
    return time.time()


def ids_of(*batches: dict[str, list[Any]]) -> set[str]:
    """The CloudEvent ids of the batches' events."""
    return {f"{e['call']}:{e['seq']}" for b in batches for events in b.values() for e in events}


async def assert_once(
    direct: str, topics: Topics, expected: set[str], aborted: set[str] | None = None
) -> None:
    """Every expected event once, committed; nothing else, read committed or not, but the
    records of one aborted transaction: at most one copy of each of `aborted`."""
    outputs = [topics.events, topics.alerts, topics.dlq]
    committed = Counter(r.json()["id"] for r in await read_decided(direct, topics, outputs))
    assert {i: n for i, n in committed.items() if n > 1} == {}, "an event was published twice"
    assert expected - set(committed) == set(), "an acknowledged event was lost"
    assert set(committed) == expected
    every = Counter(r.json()["id"] for r in await read_to_end(direct, outputs, committed=False))
    extra = every - committed
    assert set(extra) <= (aborted or set()), "records of an aborted transaction in the output"
    assert set(extra.values()) <= {1}


async def test_a_commit_answer_lost_once_is_asked_again_and_lands_once(
    proxy: CommitAnswerCut,
    behind_proxy: BehindProxy,
    start_bridge: Callable[..., Any],
    topics: Topics,
) -> None:
    handle = await start_bridge(
        bootstrap=proxy.address, dedup={"end_transaction_timeout_seconds": END_TXN_TIMEOUT}
    )
    before, during = batch(topics, 1), batch(topics, 1 + SEQS)
    await deliver(handle.session, lambda: handle.url, before)
    await until_decided(behind_proxy.direct, topics)  # the next commit carries `during` only
    proxy.arm()
    await deliver(handle.session, lambda: handle.url, during)
    await asyncio.wait_for(proxy.cut.wait(), 30)

    await assert_once(behind_proxy.direct, topics, ids_of(before, during))
    # aiokafka sent the EndTxn again on a new connection; the coordinator answered it as it had
    # answered the first (same epoch): committed, no partition lost.
    [lost] = proxy.dropped
    assert lost.commit is True
    assert proxy.dropped_errors == [0], "the coordinator did not commit the transaction"
    assert [e for e in proxy.end_txns if e.producer_epoch == lost.producer_epoch][1:], (
        "the commit was never asked again"
    )
    m = handle.metrics
    assert sample(m, "pinecall_bridge_dedup_transactions_total", outcome="unknown") == 0
    for reason in get_args(LossReason):  # `producer` too: no loss of any kind
        assert sample(m, "pinecall_bridge_dedup_partitions_lost_total", reason=reason) == 0


@pytest.mark.parametrize("lose", ["answer-cut", "answer-silent", "request-silent"])
async def test_a_commit_left_unanswered_restarts_its_partitions_from_what_committed(
    proxy: CommitAnswerCut,
    behind_proxy: BehindProxy,
    start_bridge: Callable[..., Any],
    topics: Topics,
    caplog: pytest.LogCaptureFixture,
    lose: str,
) -> None:
    handle = await start_bridge(
        bootstrap=proxy.address, dedup={"end_transaction_timeout_seconds": END_TXN_TIMEOUT}
    )
    before, during, after = batch(topics, 1), batch(topics, 1 + SEQS), batch(topics, 1 + 2 * SEQS)
    await deliver(handle.session, lambda: handle.url, before)
    await until_decided(behind_proxy.direct, topics)  # the next commit carries `during` only
    # No answer before the commit's bound has passed: its outcome is unknown. Cut, the bridge
    # finds no way back to ask again; silent, its connection waits on an answer that never comes;
    # the request lost, the coordinator aborts it when the replacement producer starts.
    if lose == "answer-cut":
        proxy.arm(refuse_for=END_TXN_TIMEOUT + 3)
    else:
        proxy.arm(hold=True, request_too=lose == "request-silent")
    cut_at = asyncio.create_task(set_at(proxy.cut))
    with caplog.at_level(logging.WARNING, logger="bridge.dedup"):
        await deliver(handle.session, lambda: handle.url, during)
        await asyncio.wait_for(cut_at, 30)
        m = handle.metrics

        def lost() -> float:
            return sample(m, "pinecall_bridge_dedup_partitions_lost_total", reason="timeout")

        await until(lambda: lost() >= 1, 30, 0.1, "a partition lost to the timeout")
        await deliver(handle.session, lambda: handle.url, after)

    if lose == "request-silent":
        # Aborted: its records stay in the log, read only by a read_uncommitted reader.
        await assert_once(
            behind_proxy.direct, topics, ids_of(before, during, after), ids_of(during)
        )
        assert proxy.dropped_errors == []
    else:
        await assert_once(behind_proxy.direct, topics, ids_of(before, during, after))
        assert proxy.dropped_errors == [0], "the coordinator did not commit the transaction"
    assert sample(m, "pinecall_bridge_dedup_transactions_total", outcome="unknown") == 1
    if lose == "answer-cut":
        assert proxy.refused >= 1, "the bridge never tried to reach the broker during the cut"
    said = [r for r in caplog.records if r.getMessage().startswith("dedup partition lost")]
    reasons = [getattr(r, "reason", None) for r in said]
    assert reasons, "no partition lost was logged"
    assert set(reasons) == {"timeout"}, reasons
    # One line for the partitions one failure lost, each named.
    assert lost() == sum(len(getattr(r, "partitions", ())) for r in said)
    if lose != "answer-cut":
        # The old producer, its EndTxn on a silent connection, is closed in the background: its
        # stop held the stage's lock ~4.5 s more (the loss came 6.5 s after the cut).
        [first_loss, *_] = [
            r.created for r in caplog.records if r.getMessage().startswith("dedup partition lost")
        ]
        gap = first_loss - cut_at.result()
        assert gap < END_TXN_TIMEOUT + 1.0, f"the loss came {gap:.1f} s after the cut"


@pytest.mark.parametrize("same_id", [True, False], ids=["same-transactional-id", "new-id"])
@pytest.mark.parametrize("lose", ["answer", "request"])
async def test_a_process_dead_with_its_commit_unanswered_is_taken_over_once(
    proxy: CommitAnswerCut,
    behind_proxy: BehindProxy,
    topics: Topics,
    tmp_path: Path,
    same_id: bool,
    lose: str,
) -> None:
    """Answer lost, the coordinator committed; request lost, the transaction stays open until
    the successor's InitProducerId (same id) or its timeout (new id) aborts it."""

    def replica(name: str) -> Replica:
        port = free_port()
        extra = {"BRIDGE_DEDUP__INSTANCE_ID": "one"} if same_id else {}
        env = replica_env(proxy.address, topics, port, **extra)
        return Replica(name, env, tmp_path / f"{name}.log", port)

    first, second = replica("r1"), replica("r2")
    await first.start()
    try:
        async with aiohttp.ClientSession() as session:
            partitions = int(second.env["BRIDGE_TOPICS__INGEST_PARTITIONS"])
            before, during = batch(topics, 1, partitions), batch(topics, 1 + SEQS, partitions)
            after = batch(topics, 1 + 2 * SEQS, partitions)
            await deliver(session, lambda: first.url, before)
            await until_decided(behind_proxy.direct, topics)
            # Refused long after the cut: the process gets no second chance before its end.
            proxy.arm(refuse_for=60, request_too=lose == "request")
            target = first
            delivering = asyncio.create_task(deliver(session, lambda: target.url, during))
            await asyncio.wait_for(proxy.cut.wait(), 30)
            first.kill()  # no retry, no abort, no LeaveGroup: its commit's answer died with it
            proxy.heal()
            target = second
            await second.start()
            await delivering  # what the dead one left unanswered, sent again to the new one

            async def owns_all() -> bool:
                samples = await second.metrics(session)
                return total(samples, "pinecall_bridge_dedup_partitions_owned") == partitions

            # Once the dead member's session has expired, every partition is the new one's,
            # restored from what the coordinator committed.
            await until(owns_all, 60, 0.5, "the new process owns every partition")
            await deliver(session, lambda: second.url, after)
            aborted = ids_of(during) if lose == "request" else set()
            await assert_once(behind_proxy.direct, topics, ids_of(before, during, after), aborted)
            samples = await second.metrics(session)
            assert total(samples, "pinecall_bridge_dedup_partitions_lost_total") == 0
            assert (
                total(samples, "pinecall_bridge_dedup_transactions_total", outcome="unknown") == 0
            )
            # Restored from committed offsets (the unanswered commit's, if it landed), on every
            # partition.
            said = [e["msg"] for e in second.log_entries()]
            assert not [m for m in said if m.startswith("dedup partition has no committed offset")]
            assert said.count("dedup partition owned") >= partitions
    finally:
        for r in (first, second):
            if r.alive:
                await r.stop()
    [lost] = proxy.dropped
    assert lost.commit is True
    assert proxy.dropped_errors == ([0] if lose == "answer" else [])


def producer_of(replica: Replica) -> str | None:
    """The transactional id of the replica's dedup producer, as it logged it."""
    ids = [
        e.get("transactional_id")
        for e in replica.log_entries()
        if e.get("msg") == "dedup producer started"
    ]
    return ids[-1] if ids else None


@pytest.mark.parametrize("lose", ["answer", "request"])
async def test_sigterm_with_a_commit_unanswered_stops_in_time_and_the_successor_outputs_once(
    proxy: CommitAnswerCut, behind_proxy: BehindProxy, topics: Topics, tmp_path: Path, lose: str
) -> None:
    """The signal lands while the coordinator keeps a commit's answer: the stop waits on it only
    its bound, ends within the grace period (exit 0, no traceback), and the partitions' next
    owner outputs each event once, whatever the coordinator decided."""

    def replica(name: str) -> Replica:
        port = free_port()
        return Replica(
            name, replica_env(proxy.address, topics, port), tmp_path / f"{name}.log", port
        )

    first, second = replica("r1"), replica("r2")
    grace = float(first.env["BRIDGE_SHUTDOWN__GRACE_SECONDS"])
    partitions = int(first.env["BRIDGE_TOPICS__INGEST_PARTITIONS"])
    await first.start()
    try:
        async with aiohttp.ClientSession() as session:
            before, during = batch(topics, 1, partitions), batch(topics, 1 + SEQS, partitions)
            after = batch(topics, 1 + 2 * SEQS, partitions)
            await deliver(session, lambda: first.url, before)
            await until_decided(behind_proxy.direct, topics)
            await second.start()
            proxy.arm(hold=True, request_too=lose == "request")
            target = first
            delivering = asyncio.create_task(deliver(session, lambda: target.url, during))
            await asyncio.wait_for(proxy.cut.wait(), 60)
            # Either replica's commit may be the one held: that one is stopped.
            [held] = proxy.dropped
            stopping, successor = (
                (first, second) if producer_of(first) == held.transactional_id else (second, first)
            )
            assert producer_of(stopping) == held.transactional_id
            assert stopping.process is not None
            started = asyncio.get_running_loop().time()
            stopping.process.terminate()
            code = await asyncio.to_thread(stopping.process.wait, grace + 30)
            took = asyncio.get_running_loop().time() - started
            log = stopping.log.read_text(errors="replace")
            said = f"exit {code} after {took:.1f} s\n" + "\n".join(log.splitlines()[-15:])
            assert code == 0, said
            assert took <= grace + 2, said
            assert "Traceback" not in log, said
            assert stopping.log_entries()[-1].get("msg") == "stopped", said
            target = successor
            await delivering  # what the stopped one left unanswered, sent again to the next
            await deliver(session, lambda: successor.url, after)
            aborted = ids_of(during) if lose == "request" else set()
            await assert_once(behind_proxy.direct, topics, ids_of(before, during, after), aborted)
    finally:
        for r in (first, second):
            if r.alive:
                await r.stop()


def losses(caplog: pytest.LogCaptureFixture) -> list[tuple[int, Any, Any]]:
    """Each 'dedup partition lost' line so far: its level, reason and partitions."""
    return [
        (r.levelno, getattr(r, "reason", None), getattr(r, "partitions", None))
        for r in caplog.records
        if r.getMessage().startswith("dedup partition lost")
    ]


async def test_a_producer_that_cannot_be_replaced_loses_every_owned_partition_at_once(
    proxy: CommitAnswerCut,
    behind_proxy: BehindProxy,
    start_bridge: Callable[..., Any],
    topics: Topics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A commit of partition 0's only, unanswered, costs it (`timeout`) and the producer; every
    InitProducerId refused meanwhile, the replacement cannot start, and partitions 1 and 2, owned
    and fed a trickle, are lost together on that one start's failure: one ERROR, `producer`."""
    handle = await start_bridge(
        bootstrap=proxy.address, dedup={"end_transaction_timeout_seconds": END_TXN_TIMEOUT}
    )
    before = batch(topics, 1)
    first, *others = before  # the calls on partitions 0, 1 and 2
    await deliver(handle.session, lambda: handle.url, before)
    await until_decided(behind_proxy.direct, topics)  # every partition owned, the producer up
    m = handle.metrics

    def lost(reason: str) -> float:
        return sample(m, "pinecall_bridge_dedup_partitions_lost_total", reason=reason)

    during = {first: [entry(1 + SEQS, call=first)]}
    trickle: dict[str, list[Any]] = {call: [] for call in others}

    async def feed(stop: asyncio.Event) -> None:
        """The other partitions' events, one each every 0.2 s, until `stop` (each acknowledged)."""
        seq = 1 + SEQS
        while not stop.is_set():
            for call in others:
                trickle[call].append(entry(seq, call=call))
            await deliver(
                handle.session, lambda: handle.url, {c: [e[-1]] for c, e in trickle.items()}
            )
            seq += 1
            await asyncio.sleep(0.2)

    proxy.arm(hold=True)  # the coordinator commits; the bridge never hears it did
    proxy.hold_init()
    with caplog.at_level(logging.WARNING, logger="bridge.dedup"):
        await deliver(handle.session, lambda: handle.url, during)
        await asyncio.wait_for(proxy.cut.wait(), 30)
        # Only now: a record of theirs in the unanswered transaction would lose them with it.
        stop = asyncio.Event()
        feeding = asyncio.create_task(feed(stop))
        try:
            await until(
                lambda: lost("producer") >= 1,
                20,
                0.05,
                lambda: f"a loss to the producer; lost instead: {losses(caplog)}",
            )
            await asyncio.sleep(END_TXN_TIMEOUT)  # held past another start's bound too
        finally:
            stop.set()
            await feeding
        assert proxy.inits_refused >= 1, "no replacement producer asked for its id"
        proxy.release_init()
        after = batch(topics, 1000)
        await deliver(handle.session, lambda: handle.url, after)
        await assert_once(behind_proxy.direct, topics, ids_of(before, during, trickle, after))

    # The commit's partition alone to its timeout; the others at once, on the start's failure.
    lines = losses(caplog)
    assert lines == [(logging.ERROR, "timeout", [0]), (logging.ERROR, "producer", [1, 2])], lines
    assert {r: lost(r) for r in get_args(LossReason)} == {
        "fenced": 0,
        "timeout": 1,
        "error": 0,
        "producer": 2,
    }
    # One start, shared, bounded by its own timeout: not each partition's step deadline in turn.
    said = [r for r in caplog.records if r.getMessage().startswith("dedup partition lost")]
    gap = said[1].created - said[0].created
    assert gap < 2 * END_TXN_TIMEOUT, f"the producer's loss came {gap:.1f} s after the commit's"
