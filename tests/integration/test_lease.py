"""The feed lease on a real broker: its topic made while the lease's member was joining."""

from __future__ import annotations

import pytest

from bridge.groups import group_metadata
from bridge.metrics import Metrics
from bridge.sources.lease import FeedLease
from tests.integration.conftest import Topics, create_topic
from tests.polling import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_lease_topic_the_broker_learns_after_the_join_is_held_within_a_refresh(
    kafka_bootstrap: str, topics: Topics
) -> None:
    # The bridge creates the topic just before the lease starts; a loaded broker answered the
    # join's metadata without it, nobody was assigned the lease, and aiokafka's next metadata
    # refresh came 5 minutes later: no feed ran meanwhile.
    events: list[str] = []

    async def acquired() -> None:
        events.append("acquired")

    async def lost() -> None:
        events.append("lost")

    group = f"{topics.group}-feed-lease"
    lease = FeedLease(
        topics.feed_lease,
        group,
        {"bootstrap_servers": kafka_bootstrap},
        Metrics(),
        on_acquired=acquired,
        on_lost=lost,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    await lease.start()
    try:
        consumer = lease._consumer
        assert consumer is not None
        await until(lambda: group_metadata(consumer, group), 60, 0.1, "the member joined")
        assert not lease.held
        await create_topic(kafka_bootstrap, topics.feed_lease, 1)
        await until(lambda: lease.held, 30, 0.1, "the lease held once the topic exists")
        assert events == ["acquired"]
    finally:
        await lease.stop()
