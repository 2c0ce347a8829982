"""A Kafka that refuses the feed lease's member a rejoin: the holder gives the lease up."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.metrics import Metrics
from bridge.sources.lease import FeedLease
from tests.integration.conftest import Broker, create_topic, own_broker
from tests.polling import until

# A broker started twice, on a busy box.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
TOPIC = "pinecall.feed-lease-refused"


def lease(bootstrap: str, name: str, session_timeout_ms: int, events: list[str]) -> FeedLease:
    async def acquired() -> None:
        events.append(f"{name} started")

    async def lost() -> None:
        events.append(f"{name} stopped")

    return FeedLease(
        TOPIC,
        "g-feed-lease-refused",
        {"bootstrap_servers": bootstrap},
        Metrics(),
        on_acquired=acquired,
        on_lost=lost,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=1_000,
        name=name,
    )


async def test_a_holder_refused_at_a_rejoin_gives_the_lease_up(tmp_path: Path) -> None:
    # The brokers' session bounds raised past the holder's (a rolling restart), and a replica
    # within them joined: the holder, refused at its rejoin, was in no group, kept its feed,
    # and the replica was assigned the lease too: two feeds, for good.
    events: list[str] = []
    with own_broker(tmp_path / "kafka") as broker:
        await create_topic(broker.bootstrap, TOPIC, 1)
        holder = lease(broker.bootstrap, "A", 10_000, events)
        await holder.start()
        joining = lease(broker.bootstrap, "B", 12_000, events)
        try:
            await until(lambda: holder.held, 60, 0.1, "the first member holding the lease")
            overlay = tmp_path / "bounds.properties"
            overlay.write_text("group.min.session.timeout.ms=12000\n")
            await broker.down()
            await Broker(broker.port, broker.data_dir, {"KAFKA_CONFIG_OVERLAY": str(overlay)}).up()
            await joining.start()
            await until(lambda: joining.held, 90, 0.1, "the replica within the bounds holding it")
            await until(lambda: not holder.held, 10, 0.1, "the refused holder giving it up")
            assert events == ["A started", "A stopped", "B started"]
        finally:
            await joining.stop()
            await holder.stop()
