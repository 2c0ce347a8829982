"""Whether an aiokafka client's background task has died: the one look at its private attributes.

aiokafka sends from one background task per producer (Sender.sender_task) and keeps a consumer's
group membership and fetching in others (GroupCoordinator._coordination_task,
Fetcher._fetch_task), and each keeps its metadata fresh in another (AIOKafkaClient._sync_task).
When one of them dies of an unexpected error (aiokafka#1038: under uvloop,
writing to a just-reset connection raises RuntimeError) the client fails every later call and
never recovers by itself: its owner must replace it. The attributes are private; where a future
aiokafka lacks them the client counts as alive, and that is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.client import ConnectionGroup
from aiokafka.conn import CloseReason
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    RequestTimedOutError,
)
from aiokafka.protocol.metadata import MetadataRequest

from bridge import stopbudget
from bridge.logthrottle import LogThrottle
from bridge.sink.connectsetup import ConnectionTally, run_tallied

log = logging.getLogger(__name__)

_PRODUCER = (("_sender", "sender_task"), ("client", "_sync_task"))
_CONSUMER = (
    ("_coordinator", "_coordination_task"),
    ("_fetcher", "_fetch_task"),
    ("_client", "_sync_task"),
)
# What a stop cut short may leave running: a producer's sender, a consumer's group and fetch tasks
# (the metadata task is the client's, ended by its close).
_CUT_TASKS = (
    ("_sender", "sender_task"),
    ("_coordinator", "_coordination_task"),
    ("_coordinator", "_heartbeat_task"),
    ("_coordinator", "_commit_refresh_task"),
    ("_fetcher", "_fetch_task"),
)
_UNREACHABLE = (
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
    OSError,
    TimeoutError,
)
_warned: set[str] = set()
# Failed replacements in a row (the cluster reachable) before the owner reports the process dead.
REPLACE_ATTEMPTS = 5
# A replacement's failed tries through a Kafka outage are said once each this long, as the feed's
# retries are: what was held back is said when one starts (or the tries end).
REPLACING_LOG_EVERY = 300.0
# How long a start whose caller was cancelled may still run, to finish its bootstrap (start_client).
START_SETTLE_SECONDS = stopbudget.STOP_SETTLE_SECONDS
# How long the undo of a failed or cancelled start may run before the client is cut short: a
# stop of a client that never joined a group or sent a record is local work, unless the cluster
# froze, when it would wait out aiokafka's request timeouts (or for ever) and hold the caller.
# A cancelled start's settle uses it up first: a start cut at a stop's deadline so runs past it
# no longer than a cut stop does, which the shutdown's reserve covers (bridge/stopbudget.py).
UNDO_SECONDS = stopbudget.STOP_SETTLE_SECONDS
# How long a consumer's stop whose caller was cancelled may still run (stop_consumer), and how
# long a cut waits for what it cancelled or closed: their sum bounds how far a stop cut at its
# deadline runs past it, which the shutdown keeps a reserve for (bridge/stopbudget.py).
STOP_SETTLE_SECONDS = stopbudget.STOP_SETTLE_SECONDS
CUT_SECONDS = stopbudget.CUT_SECONDS
# The share of a probe's interval aiokafka's metadata update may take. One interval bounds all of
# a probe's asks together (each took up to one in turn: readiness judged two or three late in a
# partial outage); the rest is left for asking the brokers directly when a broker gone silent
# holds the update, or for judging the ingest topic's writability when it answers.
UPDATE_SHARE = 0.5
T = TypeVar("T")


def producer_died(producer: Any) -> str | None:
    """Why a started producer's sender task ended, or None while it runs (or cannot be told)."""
    return _died(producer, _PRODUCER)


def consumer_died(consumer: Any) -> str | None:
    """Why a started group consumer's coordination or fetch task ended, or None while both run."""
    return _died(consumer, _CONSUMER)


async def stop_dead(client: Any, within: float) -> None:
    """Stop a client whose task died, within `within` s; whatever it raises is logged only.

    A stop not over by then is cut short (cut_short, within CUT_SECONDS more): cancelled alone,
    it would leave a producer's sender task pending and either client's connections open.
    """
    try:
        stopping, timed_out = await _stop(client, within, min(STOP_SETTLE_SECONDS, within))
    finally:
        # The death was logged once, with its cause: unretrieved, each dead task's error would
        # be logged again, traceback and all, whenever the task is garbage-collected.
        for owner_name, task_name in _PRODUCER + _CONSUMER:
            task = getattr(getattr(client, owner_name, None), task_name, None)
            if isinstance(task, asyncio.Future) and task.done() and not task.cancelled():
                task.exception()
    if timed_out or not stopping.done():
        log.warning("a dead Kafka client did not stop in time", extra={"within_s": within})
    elif stopping.cancelled() or stopping.exception() is not None:
        error = "cancelled" if stopping.cancelled() else repr(stopping.exception())
        log.warning("a dead Kafka client did not stop cleanly", extra={"error": error})


async def stop_producer(producer: Any) -> None:
    """Stop (flush and close) a producer; one cut by the caller's cancellation is cut short.

    No settle time, unlike a consumer's stop: the caller's bound is on the flush itself, which
    one more second would not finish, and what is left of the grace period belongs to others.
    """
    stopping, _ = await _stop(producer, None, 0.0)
    if stopping.done() and not stopping.cancelled():
        stopping.result()


async def cut_short(client: Any, within: float) -> None:
    """End what a client's stop, cut short, left running: its background tasks and connections.

    aiokafka's stop() counts the client closed before it waits for its tasks, so a stop cut by a
    timeout or a cancellation leaves them pending and the connections open for good; no later
    stop() reaches them, and asyncio logs "Task was destroyed but it is pending!" (or aiokafka
    "Unclosed AIOKafkaConnection") when they are collected. A fetch task left running would
    even open connections anew.
    """
    tasks = [
        task
        for owner_name, task_name in _CUT_TASKS
        if isinstance(
            task := getattr(getattr(client, owner_name, None), task_name, None), asyncio.Future
        )
    ]
    # A consumer's fetches from each broker, which its fetcher's close would have cancelled.
    tasks += list(getattr(getattr(client, "_fetcher", None), "_pending_tasks", ()))
    tasks += _unreferenced_tasks(client)
    for task in tasks:
        task.cancel()
    connections = connections_of(client)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            if connections is not None:
                with contextlib.suppress(Exception):
                    await connections.close()
            if tasks:
                await asyncio.wait(tasks)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # its death is the stop's failure, logged by the caller if at all


async def close_now(client: Any) -> None:
    """Close a client without waiting on the cluster: a consumer leaves no group, say.

    Its stop is begun, so that it counts closed (else "Unclosed AIOKafkaConsumer" when it is
    collected), then cut short at once; what it raises is the stop's, not the caller's.
    """
    stopping, _ = await _stop(client, 0.0, 0.0)
    if stopping.done() and not stopping.cancelled():
        stopping.exception()


async def start_consumer(consumer: Any) -> None:
    """Start a consumer; one whose start fails or is cancelled is stopped before that is raised.

    A constructed aiokafka consumer counts as open: never stopped (a partition start or the
    shutdown cancelling the task in its start), it holds the connections its start opened and
    is reported "Unclosed AIOKafkaConsumer" when collected.
    """
    await start_client(consumer, consumer.start, consumer.stop)


async def start_client(
    client: Any, start: Callable[[], Awaitable[Any]], undo: Callable[[], Awaitable[Any]]
) -> None:
    """Run a Kafka client's `start`; one that fails or is cancelled is undone before that is raised.

    A cancelled start first runs on, for up to START_SETTLE_SECONDS: aiokafka's bootstrap cut
    short while its metadata request is out drops that connection unclosed (nothing else refers
    to it: "Unclosed AIOKafkaConnection" when collected), which no stop of the client can reach.
    Against a live broker that request takes milliseconds, unless the loop is starved: a start
    cut all the same has every connection it set up closed (connectsetup.ConnectionTally). The
    undo (the client's stop or close) runs in a task of its own for up to UNDO_SECONDS, less
    what the settle took; one cut there, failed, or ended by a CancelledError from inside
    aiokafka leaves `client` cut short.
    """
    # The start's connections, held until it ends: a start still running when the settle is
    # over is cancelled, on a starved loop (a loaded node) even against a live broker, and one
    # cut in its bootstrap's metadata request would drop that connection unclosed.
    tally = ConnectionTally()
    starting = run_tallied(start, tally)
    try:
        await asyncio.shield(starting)
    except BaseException:
        loop = asyncio.get_running_loop()
        undo_by = loop.time() + UNDO_SECONDS
        if not starting.done():  # the caller was cancelled, not the start
            await _settle(starting, START_SETTLE_SECONDS)
        if starting.done() and not starting.cancelled():
            starting.exception()  # raised already, or superseded by the cancellation
        # What the start raised is what the caller must see, not a failure of this undo. Begun
        # even with no time left, so that the client counts closed; then cut short.
        within = max(undo_by - loop.time(), 0.0)
        try:
            _, timed_out = await _stop(client, within, 0.0, undo)
        finally:
            # The client's close reaches only the connections it keeps (not a bootstrap's).
            closed = tally.close_open()
            if closed:
                # Else the only trace of a start cut in its bootstrap is the connection's close.
                log.info(
                    "a Kafka client's cut start left connections open; closed",
                    extra={"client": type(client).__name__, "connections": closed},
                )
        if timed_out:
            log.warning(
                "a Kafka client's failed start was not undone in time; cut short",
                extra={"client": type(client).__name__, "within_s": round(within, 3)},
            )
        raise
    finally:
        tally.end()


async def _settle(starting: asyncio.Future[Any], within: float) -> None:
    """Let a start or stop whose caller was cancelled finish, within `within` s; else cancel."""
    # Cancelled again: the caller raises its cancellation anyway; the wait ends here.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({starting}, timeout=within)
    if not starting.done():
        starting.cancel()
        # Unwound before the undo, as an awaited start would be; a cancelled start ends at once,
        # but one catching its cancellation to clean up must not hold the whole stop.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({starting}, timeout=CUT_SECONDS)
        if not starting.done():
            log.warning(
                "a Kafka client's start or stop did not end when cancelled",
                extra={"within_s": CUT_SECONDS},
            )


async def stop_consumer(consumer: Any, within: float | None = None) -> None:
    """Stop (leave the group, close) a consumer in a task of its own; one cut or failed is cut
    short, so nothing of it is left open, and a failed stop's error is raised.

    `within`: a bound of its own, for a caller whose cancellation was delivered already.

    A CancelledError from inside aiokafka ends its stop, not the caller: aiokafka's fetcher awaits
    the fetch tasks it cancels, and one sleeping out its retry backoff (a broker down or
    restarting) raises CancelledError out of stop(): awaited directly, it would pass for a
    cancellation of the caller and end a whole shutdown or partition start with it; here it is
    logged. The caller's own cancellation lets the stop settle for STOP_SETTLE_SECONDS, then cuts
    it, and is raised.
    """
    stopping, timed_out = await _stop(consumer, within, STOP_SETTLE_SECONDS)
    if stopping.done() and not stopping.cancelled():
        stopping.result()
        return
    if timed_out:
        log.warning("a Kafka consumer's stop was cut short", extra={"within_s": within})
        return
    # The fetcher gave up at that task, before it cancelled its other brokers' fetches and before
    # the consumer closed its connections: cut_short (in _stop) ended them.
    log.info("a Kafka consumer's stop was cut short inside aiokafka (a fetch was being retried)")


async def _stop(
    client: Any,
    within: float | None,
    settle: float,
    stop: Callable[[], Awaitable[Any]] | None = None,
) -> tuple[asyncio.Future[Any], bool]:
    """Stop a client (by `stop`, else its own) in a task; the ended stop, whether `within` cut it.

    Its own task, so that a CancelledError from inside aiokafka (its fetcher awaits the tasks it
    cancels) cannot pass for a cancellation of the caller. A stop cut (by `within`, by the
    caller's cancellation after `settle` s, or inside aiokafka) or failed is cut short; the
    caller's cancellation is then raised.
    """
    stopping = asyncio.ensure_future(client.stop() if stop is None else stop())
    try:
        await asyncio.wait({stopping}, timeout=within)
    except asyncio.CancelledError:
        await _settle(stopping, settle)
        await _cut_unless_stopped(client, stopping)
        raise
    timed_out = not stopping.done()
    await _settle(stopping, 0.0)  # cancels one not over
    await _cut_unless_stopped(client, stopping)
    read_failed_batches(client)
    return stopping, timed_out


async def _cut_unless_stopped(client: Any, stopping: asyncio.Future[Any]) -> None:
    # Not over even so: it ignored its cancellation (_settle bounds the wait for it).
    if not stopping.done() or stopping.cancelled() or stopping.exception() is not None:
        await cut_short(client, CUT_SECONDS)


def fail_pending(producer: Any, error: BaseException) -> None:
    """Fail every record a dead producer still holds: with its sender gone nothing else will.

    Their waiters (and the in-flight count) would otherwise wait for ever. aiokafka 0.12-0.14's
    accumulator; a version without it is left as it is.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    fail_all = getattr(accumulator, "fail_all", None)
    if not callable(fail_all):
        return
    _retried_pending(accumulator)
    _put_back_unless_failed(accumulator)
    fail_all(error)
    read_failed_batches(producer)
    queued = getattr(accumulator, "_batches", None)
    if isinstance(queued, dict):
        # A wedged producer's sender still runs until its stop cancels it: a drain meanwhile
        # (a linger ending, an answer) took a failed batch, and aiokafka's assertion that a batch
        # given sequence numbers is not drained yet killed the sender, traceback logged.
        queued.clear()


def _put_back_unless_failed(accumulator: Any) -> None:
    """Make a wedged producer's sender, which runs on until its stop, or the requests a dead
    sender left in flight, drop a failed batch that a retriable answer would put back for a retry.

    Failed here, the batch left the pending set by its own callback, and aiokafka's reenqueue
    raised KeyError (the sender dead of it, a traceback; or raised by the stop) after queueing it
    again, to be sent anew. Its records were failed, for their sources to retry: none is lost.
    """
    reenqueue = getattr(accumulator, "reenqueue", None)
    if not callable(reenqueue) or "reenqueue" in getattr(accumulator, "__dict__", {}):
        return  # replaced already (failing_all's, then fail_pending's): once is enough

    def put_back(batch: Any) -> None:
        failed = getattr(batch, "future", None)
        if not (isinstance(failed, asyncio.Future) and failed.done()):
            reenqueue(batch)

    accumulator.reenqueue = put_back  # looked up at the call by aiokafka's produce handler


def fail_all_quietly(producer: Any) -> bool:
    """Make aiokafka's own failing of every batch, when the producer's sender dies, put retried
    batches back in the pending set first, and keep failed ones from being put back for a retry,
    as fail_pending does; False if it cannot.

    Installed on each producer built: by the time the bridge sees the death, aiokafka's
    callback has failed them, and asyncio has logged each retried batch's KeyError (and that of
    each request the dead sender left in flight and a broker answered retriable meanwhile).
    """
    accumulator: Any = getattr(producer, "_message_accumulator", None)
    fail_all = getattr(accumulator, "fail_all", None)
    if not callable(fail_all) or not isinstance(getattr(accumulator, "_batches", None), dict):
        return False

    def failing_all(exception: BaseException) -> None:
        _retried_pending(accumulator)
        _put_back_unless_failed(accumulator)
        fail_all(exception)

    accumulator.fail_all = failing_all  # looked up at the call by aiokafka's Sender._fail_all
    return True


def _retried_pending(accumulator: Any) -> None:
    """Put each queued batch in the pending set before the accumulator fails them all."""
    queued = [
        batch for batches in getattr(accumulator, "_batches", {}).values() for batch in batches
    ]
    pending = getattr(accumulator, "_pending_batches", None)
    if isinstance(pending, set):
        # A batch put back for a retry (an outage, a full disk's KafkaStorageError) has left this
        # set, but the callback of its first send still removes it when it fails: aiokafka's
        # KeyError, which asyncio logged at ERROR. The producer is dead: the set is not read again.
        pending.update(queued)


def read_failed_batches(producer: Any) -> None:
    """Read the failure of each batch a producer holds, failed by fail_pending or by aiokafka's
    sender as it died (a dedup producer's, when its broker's disk filled).

    Nobody awaits a batch's drain unless a send waits for room in it: unread, each failure was
    logged at ERROR when collected ("Future exception was never retrieved"), cause unsaid.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    queued = getattr(accumulator, "_batches", None)
    pending = getattr(accumulator, "_pending_batches", None)
    batches = [batch for batches in queued.values() for batch in batches] if queued else []
    batches += pending if isinstance(pending, set) else ()
    for batch in batches:
        drained = getattr(batch, "_drain_waiter", None)
        if isinstance(drained, asyncio.Future) and drained.done() and not drained.cancelled():
            drained.exception()


def _unreferenced_tasks(producer: Any) -> list[asyncio.Task[Any]]:
    """A producer's tasks that nothing refers to: its sender's requests, its accumulator's close.

    A stop cut short leaves them waiting on the cluster, or on records no sender will answer
    (aiokafka's stop awaits its accumulator's close in a task of its own): cancelled with the
    sender, they end with it. Their records are not failed: a failed batch in flight would
    break the sender's own bookkeeping (it re-enqueues a batch it no longer holds).
    """
    owners = [getattr(producer, "_sender", None), getattr(producer, "_message_accumulator", None)]
    owners = [owner for owner in owners if owner is not None]
    if not owners:
        return []
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and any(_runs_method_of(task, owner) for owner in owners)
    ]


def _runs_method_of(task: asyncio.Task[Any], owner: object) -> bool:
    """The task runs a coroutine method of `owner` (aiokafka keeps no reference to some)."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    return frame is not None and frame.f_locals.get("self") is owner


def unreachable(exc: BaseException) -> bool:
    """The cluster could not be reached: an outage, which restarting the process cannot cure."""
    return isinstance(exc, _UNREACHABLE)


def close_gone_connections(client: Any, listed: set[int]) -> list[int]:
    """Close an AIOKafkaClient's open connections to brokers its metadata no longer lists; their
    node ids.

    A broker whose host vanished (its packets dropped, no RST) holds every request in flight to
    it until the request timeout (30 s), after the controllers fenced it and its partitions'
    leaders moved: the batches in them wait that long. Failed at once, they go to the new
    leaders. A fenced broker is left out of the metadata: `listed`, the brokers a metadata
    answer listed.
    """
    conns = getattr(client, "_conns", None)
    cluster = getattr(client, "cluster", None)
    if not isinstance(conns, dict) or cluster is None:
        if "AIOKafkaClient._conns" not in _warned:
            _warned.add("AIOKafkaClient._conns")
            log.warning(
                "cannot see an aiokafka client's connections (aiokafka changed?); a silent"
                " broker's requests wait out the request timeout",
                extra={"attribute": "AIOKafkaClient._conns"},
            )
        return []
    if not listed:
        return []  # no answer: nothing to tell a gone broker by
    closed = []
    # Keyed (node id, connection group); the bootstrap connection's "node id" is a string.
    for (node_id, _), conn in list(conns.items()):
        if isinstance(node_id, int) and node_id not in listed and conn.connected():
            conn.close(reason=CloseReason.CONNECTION_BROKEN)
            closed.append(node_id)
    return closed


def forget_gone_brokers(client: Any, listed: set[int]) -> list[int]:
    """Drop the brokers `listed` leaves out from an AIOKafkaClient's own metadata; their node ids.

    aiokafka sends a FindCoordinator (a group member's rejoin) and its metadata updates to a
    broker picked from the client's own metadata, which a consumer refreshes only every
    metadata_max_age_ms: a fenced broker whose host vanished, still listed there, is picked, and
    the connect to it waits out the request timeout (30 s) while the member is out of its group
    and the stage's output stops. Left out, a request for it fails at once (NodeNotReady) and the
    client updates its metadata from the others; the next answer lists it again once it is back.
    """
    brokers = getattr(getattr(client, "cluster", None), "_brokers", None)
    if not isinstance(brokers, dict) or not listed:
        return []  # aiokafka changed (close_gone_connections logs it), or nothing to judge by
    gone = sorted(node for node in brokers if node not in listed)
    for node in gone:
        del brokers[node]
    return gone


def drop_gone_brokers(clients: Iterable[Any], listed: set[int]) -> list[int]:
    """Forget, then disconnect, the brokers `listed` leaves out, in each of `clients`; their ids.

    Forgotten first: a connection closed fails what is in flight on it (a group's heartbeat),
    and the lookup that follows must not pick the vanished broker from stale metadata.
    """
    clients = list(clients)
    gone = {node for client in clients for node in forget_gone_brokers(client, listed)}
    gone.update(node for client in clients for node in close_gone_connections(client, listed))
    return sorted(gone)


async def listed_brokers(client: Any, within: float) -> set[int] | None:
    """The brokers listed by the first metadata answer, within `within`, of those the client holds
    an open connection to, asked together (None: none answered).

    aiokafka's own update asks one broker at a time, and one that went silent holds it for the
    request timeout. Only held connections: opening one to such a broker would hold aiokafka's
    connection lock, and with it every new connection, as long.
    """
    conns = getattr(client, "_conns", None)
    if not isinstance(conns, dict):
        return None
    nodes = {
        node_id
        for (node_id, group), conn in conns.items()
        if isinstance(node_id, int) and group == ConnectionGroup.DEFAULT and conn.connected()
    }
    asks = [asyncio.ensure_future(client.send(node, MetadataRequest([]))) for node in nodes]
    try:
        for answer in asyncio.as_completed(asks, timeout=within):
            with contextlib.suppress(*_UNREACHABLE, KafkaError):
                return {broker[0] for broker in (await answer).brokers}
    except TimeoutError:
        pass
    finally:
        for ask in asks:
            ask.cancel()
    return None


@dataclass(frozen=True)
class Listed:
    """The brokers a metadata probe found listed, and whether aiokafka's own update answered:
    then the client's whole metadata (its partitions' leaders too) is fresh, not only this."""

    brokers: set[int]
    updated: bool


async def probe_metadata(client: Any, within: float) -> Listed | None:
    """The brokers the metadata lists now, asked through an AIOKafkaClient within `within`: its
    own metadata updated (in UPDATE_SHARE of it), else the first answer of listed_brokers in the
    rest (None: no answer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        async with asyncio.timeout(within * UPDATE_SHARE):
            answered = bool(await client.force_metadata_update())
    except (KafkaError, TimeoutError, OSError):
        answered = False
    if answered:
        return Listed({broker.nodeId for broker in client.cluster.brokers()}, updated=True)
    # Unanswered, aiokafka's update may be held by a broker gone silent: the others are asked
    # directly.
    brokers = await listed_brokers(client, max(deadline - loop.time(), 0.0))
    return None if brokers is None else Listed(brokers, updated=False)


def bootstrap_servers(configured: list[str], listed: Iterable[tuple[str, int]]) -> list[str]:
    """The servers a client built beside started ones bootstraps from: the brokers (host, port)
    their metadata lists now, else (no metadata) the configured ones.

    aiokafka tries them in random order, and a connect to a host that vanished (still in the
    settings; fenced, so gone from the metadata) waits out the request timeout before the next.
    Every client connects to the listed names after its bootstrap anyway: the same trust, with
    TLS or SASL too.
    """
    servers = sorted(
        {f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in listed}
    )
    return servers or list(configured)


def bootstrapped(options: dict[str, Any], *clients: Any) -> dict[str, Any]:
    """`options` bootstrapping from the brokers the first of `clients` (AIOKafkaClients, None for
    one not started) with metadata lists (bootstrap_servers); unchanged if none has any."""
    listed: list[tuple[str, int]] = []
    for client in clients:
        cluster = getattr(client, "cluster", None)
        listed = [] if cluster is None else [(b.host, b.port) for b in cluster.brokers()]
        if listed:
            break
    configured = options.get("bootstrap_servers")
    if configured is None:
        return options
    configured = [configured] if isinstance(configured, str) else list(configured)
    return {**options, "bootstrap_servers": bootstrap_servers(configured, listed)}


def connections_of(client: Any) -> Any:
    """A producer's or consumer's AIOKafkaClient (a producer's is `client`, a consumer's
    `_client`); None for a client without one (or not yet started)."""
    connections = getattr(client, "client", None)
    if connections is None:
        connections = getattr(client, "_client", None)
    return connections


def _died(client: Any, paths: tuple[tuple[str, str], ...]) -> str | None:
    for owner_name, task_name in paths:
        task = getattr(getattr(client, owner_name, None), task_name, None)
        if not isinstance(task, asyncio.Future):
            path = f"{type(client).__name__}.{owner_name}.{task_name}"
            if path not in _warned:
                _warned.add(path)
                log.warning(
                    "cannot watch an aiokafka background task (aiokafka changed?); assuming alive",
                    extra={"attribute": path},
                )
            continue
        if not task.done():
            continue
        if task.cancelled():
            return f"{task_name} cancelled"
        exc = task.exception()
        if exc is None:
            return f"{task_name} ended"
        cause = f" (from {exc.__cause__!r})" if exc.__cause__ is not None else ""
        return f"{task_name} died: {exc!r}{cause}"
    return None


class Replacement:
    """A dead client's replacement: the tries' count and thinned lines every owner shares, and
    the retry loop of an owner that waits for one to start (`start`).

    `alive` turns False once REPLACE_ATTEMPTS tries in a row failed with the cluster reachable
    (an outage is not the process's to cure, and never counts), and True again on a start.
    Its lines go to `logger`, the owner's: as `lines`, an owner's own line at each try.
    """

    def __init__(self, name: str, logger: logging.Logger = log) -> None:
        self.name = name
        self.alive = True
        self._log = logger
        self._failures = 0
        # Its own: one owner's replacement must not hold back another's first line. Tried at
        # each probe (2-5 s) or with a backoff growing to 30 s: unthinned, a line that often for
        # a whole outage.
        self.lines = LogThrottle(logger, every=REPLACING_LOG_EVERY)

    async def start(
        self, start: Callable[[], Awaitable[T]], running: Callable[[], bool] = lambda: True
    ) -> T | None:
        """Try `start` until one succeeds: the started replacement; None if `running()` turned
        False first."""
        try:
            return await self._start(start, running)
        finally:
            self.ended()

    async def _start(
        self, start: Callable[[], Awaitable[T]], running: Callable[[], bool]
    ) -> T | None:
        delay = 0.5
        while running():
            try:
                fresh = await start()
            except Exception as exc:
                self.failed(exc)
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 30.0)
                continue
            self.alive = True
            return fresh
        return None

    def failed(self, exc: Exception) -> None:
        """A try failed: counted (unless the cluster was unreachable) and said, thinned; the
        process reported dead (CRITICAL, once) after REPLACE_ATTEMPTS in a row."""
        self._failures += 0 if unreachable(exc) else 1
        if self._failures >= REPLACE_ATTEMPTS and self.alive:
            self.alive = False
            self._log.critical(
                f"the {self.name} cannot be replaced; reporting the process dead",
                extra={"error": repr(exc), "attempts": self._failures},
            )
        else:
            self.lines.warning(
                f"could not replace the {self.name} yet",
                extra={"error": repr(exc)},
                kind=type(exc).__name__,
            )

    def succeeded(self) -> None:
        """A replacement started (here or by the owner's own means): alive, the tries ended."""
        self.alive = True
        self.ended()

    def ended(self) -> None:
        """The tries are over: what was held back is said now, the next replacement's first
        line at once, and its tries counted from none."""
        self._failures = 0
        self.lines.flush()
        self.lines.forget()
