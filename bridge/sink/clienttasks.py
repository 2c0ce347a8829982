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
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, RequestTimedOutError

log = logging.getLogger(__name__)

_PRODUCER = (("_sender", "sender_task"), ("client", "_sync_task"))
_CONSUMER = (
    ("_coordinator", "_coordination_task"),
    ("_fetcher", "_fetch_task"),
    ("_client", "_sync_task"),
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
# How long a start whose caller was cancelled may still run, to finish its bootstrap (start_client).
START_SETTLE_SECONDS = 1.0
T = TypeVar("T")


def producer_died(producer: Any) -> str | None:
    """Why a started producer's sender task ended, or None while it runs (or cannot be told)."""
    return _died(producer, _PRODUCER)


def consumer_died(consumer: Any) -> str | None:
    """Why a started group consumer's coordination or fetch task ended, or None while both run."""
    return _died(consumer, _CONSUMER)


async def stop_dead(client: Any, within: float) -> None:
    """Stop a client whose task died, within `within` s; whatever it raises is logged only.

    Its own task, so that a CancelledError from inside aiokafka (its fetcher awaits the tasks
    it cancels) cannot pass for a cancellation of the caller.
    """
    stopping = asyncio.ensure_future(client.stop())
    done, _ = await asyncio.wait({stopping}, timeout=within)
    if not done:
        stopping.cancel()
        log.warning("a dead Kafka client did not stop in time", extra={"within_s": within})
    elif stopping.cancelled() or stopping.exception() is not None:
        error = "cancelled" if stopping.cancelled() else repr(stopping.exception())
        log.warning("a dead Kafka client did not stop cleanly", extra={"error": error})
    # The death was logged once, with its cause: unretrieved, each dead task's error would be
    # logged again, traceback and all, whenever the task is garbage-collected.
    for owner_name, task_name in _PRODUCER + _CONSUMER:
        task = getattr(getattr(client, owner_name, None), task_name, None)
        if isinstance(task, asyncio.Future) and task.done() and not task.cancelled():
            task.exception()


async def cut_short(producer: Any, within: float) -> None:
    """End what a producer's stop, cut short, left running: its sender task and connections.

    aiokafka's stop() counts the producer closed before it waits for the sender, so a stop cut
    by a timeout leaves the sender task pending and the client open for good; no later stop()
    reaches them, and asyncio logs "Task was destroyed but it is pending!" when they are collected.
    """
    sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if isinstance(sender, asyncio.Future) and not sender.done():
        sender.cancel()  # it then awaits its in-flight requests: closing the client fails them
    client = getattr(producer, "client", None)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            if isinstance(sender, asyncio.Future):
                await asyncio.wait({sender})
    if isinstance(sender, asyncio.Future) and sender.done() and not sender.cancelled():
        sender.exception()  # its death is the stop's failure, logged by the caller if at all


async def start_consumer(consumer: Any) -> None:
    """Start a consumer; one whose start fails or is cancelled is stopped before that is raised.

    A constructed aiokafka consumer counts as open: never stopped (a partition start or the
    shutdown cancelling the task in its start), it holds the connections its start opened and
    is reported "Unclosed AIOKafkaConsumer" when collected.
    """
    await start_client(consumer.start, lambda: stop_consumer(consumer))


async def start_client(
    start: Callable[[], Awaitable[Any]], undo: Callable[[], Awaitable[Any]]
) -> None:
    """Run a Kafka client's `start`; one that fails or is cancelled is undone before that is raised.

    A cancelled start first runs on, for up to START_SETTLE_SECONDS: aiokafka's bootstrap cut
    short while its metadata request is out drops that connection unclosed (nothing else refers
    to it: "Unclosed AIOKafkaConnection" when collected), which no stop of the client can reach.
    Against a live broker that request takes milliseconds.
    """
    starting = asyncio.ensure_future(start())
    try:
        await asyncio.shield(starting)
    except BaseException:
        if not starting.done():  # the caller was cancelled, not the start
            await _settle(starting)
        if starting.done() and not starting.cancelled():
            starting.exception()  # raised already, or superseded by the cancellation
        # What the start raised is what the caller must see, not a failure of this undo.
        with contextlib.suppress(Exception):
            await undo()
        raise


async def _settle(starting: asyncio.Future[Any]) -> None:
    """Let a start whose caller was cancelled finish, within START_SETTLE_SECONDS; else cancel."""
    # Cancelled again: the caller raises its cancellation anyway; the wait ends here.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({starting}, timeout=START_SETTLE_SECONDS)
    if not starting.done():
        starting.cancel()
        # Unwound before the undo, as an awaited start would be; a cancelled start ends at once.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({starting})


async def stop_consumer(consumer: Any) -> None:
    """Stop a consumer; a CancelledError from inside aiokafka ends its stop, not the caller's.

    aiokafka's fetcher awaits the fetch tasks it cancels, and one sleeping out its retry backoff
    (a broker down or restarting) raises CancelledError out of stop(): awaited directly, it would
    pass for a cancellation of the caller and end a whole shutdown or partition start with it.
    """
    stopping = asyncio.ensure_future(consumer.stop())
    try:
        await asyncio.wait({stopping})
    except asyncio.CancelledError:
        stopping.cancel()
        raise
    if not stopping.cancelled():
        stopping.result()
        return
    # The fetcher gave up at that task, before it cancelled its other brokers' fetches and before
    # the consumer closed its connections.
    fetcher = getattr(consumer, "_fetcher", None)
    for task in list(getattr(fetcher, "_pending_tasks", ())):
        task.cancel()
    client = getattr(consumer, "_client", None)
    if client is not None:
        await client.close()
    log.info("a Kafka consumer's stop was cut short inside aiokafka (a fetch was being retried)")


def fail_pending(producer: Any, error: BaseException) -> None:
    """Fail every record a dead producer still holds: with its sender gone nothing else will.

    Their waiters (and the in-flight count) would otherwise wait for ever. aiokafka 0.12-0.14's
    accumulator; a version without it is left as it is.
    """
    fail_all = getattr(getattr(producer, "_message_accumulator", None), "fail_all", None)
    if callable(fail_all):
        fail_all(error)


def unreachable(exc: BaseException) -> bool:
    """The cluster could not be reached: an outage, which restarting the process cannot cure."""
    return isinstance(exc, _UNREACHABLE)


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
    """Starts a dead client's replacement until one starts: the retry loop every owner shares.

    `alive` turns False once REPLACE_ATTEMPTS starts in a row failed with the cluster reachable
    (an outage is not the process's to cure, and never counts), and True again on a start.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.alive = True

    async def start(
        self, start: Callable[[], Awaitable[T]], running: Callable[[], bool] = lambda: True
    ) -> T | None:
        """The started replacement; None if `running()` turned False first."""
        failures, delay = 0, 0.5
        while running():
            try:
                fresh = await start()
            except Exception as exc:
                failures += 0 if unreachable(exc) else 1
                if failures >= REPLACE_ATTEMPTS and self.alive:
                    self.alive = False
                    log.critical(
                        f"the {self.name} cannot be replaced; reporting the process dead",
                        extra={"error": repr(exc), "attempts": failures},
                    )
                else:
                    log.warning(
                        f"could not replace the {self.name} yet", extra={"error": repr(exc)}
                    )
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 30.0)
                continue
            self.alive = True
            return fresh
        return None
