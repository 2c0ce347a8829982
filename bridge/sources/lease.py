"""The WebSocket feed's lease: at most one replica reads the feed, elected by Kafka's group.

Every replica with the feed enabled joins one consumer group on a one-partition topic; the member
assigned partition 0 holds the lease and runs the feed, and keeps it through rebalances. A clean
stop hands it on within about a heartbeat; a crash within the session timeout. A holder that
lingers after losing it (paused, cut off) only writes copies of events the new holder also
writes: the dedup stage drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from bridge.groups import Claim, StickyAssignor
from bridge.metrics import Metrics
from bridge.supervise import Supervisor

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lease: FeedLease) -> None:
        self._lease = lease

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Every rebalance revokes everything first (the eager protocol): the holder keeps the feed
        # until the new assignment says otherwise, or a replica joining would cost a reconnect.
        return

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if TopicPartition(self._lease.topic, 0) in assigned:
            await self._lease.acquire()
        else:
            await self._lease.release()


class FeedLease:
    """Calls `on_acquired` when this process becomes the holder and `on_lost` when it stops."""

    def __init__(
        self,
        topic: str,
        group: str,
        client: dict[str, Any],
        metrics: Metrics,
        *,
        on_acquired: Hook,
        on_lost: Hook,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.topic = topic
        self._group = group
        self._client = client
        self._metrics = metrics
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._supervisor = supervisor if supervisor is not None else Supervisor(metrics)
        self._consumer: AIOKafkaConsumer | None = None
        self._poller: asyncio.Task[None] | None = None
        self.held = False
        self._since = 0
        metrics.feed_lease_held.set(0)

    async def start(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            **self._client,
            group_id=self._group,
            enable_auto_commit=False,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
            partition_assignment_strategy=(StickyAssignor(self._claim),),
        )
        await consumer.start()
        consumer.subscribe([self.topic], listener=_Listener(self))
        self._consumer = consumer
        self._poller = self._supervisor.spawn("feed-lease", lambda: self._poll(consumer))

    async def stop(self) -> None:
        """Stop the feed if held, then leave the group so another replica takes over at once."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.release()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _claim(self) -> Claim:
        # The holder claims the lease at each join and keeps it: a replica joining or leaving
        # does not move the feed.
        return Claim((0,), self._since) if self.held else Claim()

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        # The topic stays empty; polling keeps the membership alive (max_poll_interval_ms).
        while True:
            try:
                await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feed lease poll failed")
                await asyncio.sleep(1.0)

    async def acquire(self) -> None:
        if self.held:
            return
        self.held = True
        self._since = int(time.time() * 1000)
        self._metrics.feed_lease_held.set(1)
        log.info("feed lease acquired: this replica reads the WebSocket feed")
        await self._on_acquired()

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._metrics.feed_lease_held.set(0)
        log.info("feed lease released: this replica stops reading the WebSocket feed")
        await self._on_lost()
