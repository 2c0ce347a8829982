"""Reads the output topics' stable offsets and high watermarks now and then; see hanging.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge.cancelling import cancel_and_wait
from bridge.dedup.hanging import HangWatch, Held, longest_by_topic
from bridge.metrics import Metrics
from bridge.sink.clienttasks import start_consumer, stop_consumer
from bridge.sink.connectsetup import for_role
from bridge.sink.quotas import counted, watch_throttle
from bridge.supervise import Supervisor

log = logging.getLogger(__name__)


class HangingTransactions:
    """Exports how long each output topic's most held partition has been held; logs each once.

    Two clients without a group: a read_committed one's end offsets are the stable offsets, a
    read_uncommitted one's the high watermarks (ListOffsets, as a reader's lag is measured).
    """

    def __init__(
        self,
        client: dict[str, Any],
        topics: list[str],
        metrics: Metrics,
        supervisor: Supervisor,
        *,
        every: float,
        report_after: float,
    ) -> None:
        self._client = client
        self._topics = topics
        self._metrics = metrics
        self._supervisor = supervisor
        self._every = every
        self._report_after = report_after
        self._watch = HangWatch()
        self._reported: set[tuple[TopicPartition, int]] = set()
        self._unread: set[str] = set()  # topics the last check could not read
        self._readers: tuple[AIOKafkaConsumer, AIOKafkaConsumer] | None = None
        self._task: asyncio.Task[None] | None = None
        for topic in topics:
            metrics.output_held.labels(topic).set(0)

    async def start(self) -> None:
        if self._task is not None:
            return
        # Each made only as it is started: a made one never started is still one to stop.
        started: list[AIOKafkaConsumer] = []
        throttled = counted(self._metrics, "dedup_hangwatch_consumer")
        try:
            for isolation in ("read_committed", "read_uncommitted"):
                reader = AIOKafkaConsumer(
                    **for_role(self._client, "dedup_hangwatch_consumer"),
                    group_id=None,
                    isolation_level=isolation,
                )
                watch_throttle(reader, throttled)
                await start_consumer(reader)
                started.append(reader)
        except BaseException:
            for reader in started:
                await stop_consumer(reader)
            raise
        self._readers = (started[0], started[1])
        self._task = self._supervisor.spawn("hanging-transactions", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        readers, self._readers = self._readers, None
        for reader in readers or ():
            await stop_consumer(reader)

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._every)

    async def check(self) -> list[Held]:
        """One read of every output partition; the gauge and the log follow it.

        A topic that cannot be read (missing, no Describe right, Kafka away) has no value until
        it can: a frozen one could fire the alert for good, or keep it from ever firing.
        """
        assert self._readers is not None, "start() first"
        committed, uncommitted = self._readers
        stable: dict[TopicPartition, int] = {}
        high: dict[TopicPartition, int] = {}
        unread: set[str] = set()
        for topic in self._topics:
            try:
                partitions = await _partitions(committed, topic)
                topic_stable = await committed.end_offsets(partitions)
                topic_high = await uncommitted.end_offsets(partitions)
            except (KafkaError, OSError, TimeoutError) as exc:
                unread.add(topic)
                if topic not in self._unread:
                    log.warning(
                        "could not read an output topic's offsets to watch for hanging"
                        " transactions; its gauge is left out until it can be read",
                        extra={"topic": topic, "error": repr(exc)},
                    )
            else:
                # Both or neither: a stable offset without its high watermark reads as caught up.
                stable.update(topic_stable)
                high.update(topic_high)
        self._unread = unread
        held = self._watch.observe(time.monotonic(), stable, high, unread)
        for topic, seconds in longest_by_topic(held, self._topics).items():
            if topic in unread:
                with contextlib.suppress(KeyError):
                    self._metrics.output_held.remove(topic)
            else:
                self._metrics.output_held.labels(topic).set(seconds)
        for h in held:
            key = (h.partition, h.stable)
            if h.seconds >= self._report_after and key not in self._reported:
                self._reported.add(key)
                log.error(
                    "a transaction on an output partition has not ended: read_committed readers"
                    " of it stop at its stable offset. If no producer will end it, abort it:"
                    " kafka-transactions.sh --bootstrap-server <broker> abort --topic <topic>"
                    " --partition <partition> --start-offset <stable_offset>",
                    extra={
                        "topic": h.partition.topic,
                        "partition": h.partition.partition,
                        "stable_offset": h.stable,
                        "high_watermark": h.high,
                        "held_s": round(h.seconds, 1),
                    },
                )
        # An unread topic's reports are kept with its clocks: logged once, not once per gap.
        still = {(h.partition, h.stable) for h in held}
        self._reported = {k for k in self._reported if k in still or k[0].topic in unread}
        return held


async def _partitions(reader: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions from the reader's metadata, which follows the topics it read."""
    known = reader.partitions_for_topic(topic)
    if known is None:
        # Reading partition 0's end adds the topic to the metadata the client keeps current.
        await reader.end_offsets([TopicPartition(topic, 0)])
        known = reader.partitions_for_topic(topic) or {0}
    return [TopicPartition(topic, p) for p in sorted(known)]
