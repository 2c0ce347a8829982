"""A Kafka client's start cut while the cluster is frozen is undone within its bound.

The freeze is a SIGSTOP of a broker of the test's own (connections accepted, nothing answered),
never the shared one.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from bridge.sink.clienttasks import start_consumer
from bridge.stopbudget import CUT_OVERRUN_SECONDS
from tests.integration.conftest import create_topic, own_broker
from tests.polling import until

# The most a cancelled start runs on, what the shutdown's reserve allows a cut stop: its settle
# and its undo within one settle time, their unwinding and the cut; and the loop's lag on 2 busy
# cores.
WITHIN = CUT_OVERRUN_SECONDS + 2.0


async def test_a_consumer_start_cancelled_while_the_broker_is_frozen_ends_within_the_bound(
    tmp_path: Path,
) -> None:
    # The consumer's stop awaited its coordination task, stuck in a request to the frozen
    # broker: the undo (and the partition start, restart or shutdown cutting it) waited out
    # aiokafka's 40 s request timeout.
    # The broker holds a new group's first join for this long: the start is still joining.
    with own_broker(tmp_path, overlay="group.initial.rebalance.delay.ms=60000\n") as broker:
        topic = f"it.{uuid.uuid4().hex[:10]}.frozen"
        await create_topic(broker.bootstrap, topic, 1)
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=f"it-{uuid.uuid4().hex[:10]}",
            enable_auto_commit=False,
        )
        starting = asyncio.create_task(start_consumer(consumer))
        try:
            await until(
                lambda: (
                    consumer._coordinator is not None
                    and consumer._coordinator.coordinator_id is not None
                ),
                30,
                0.05,
                "the consumer joining its group",
            )
            with broker.unresponsive():
                loop = asyncio.get_running_loop()
                cancelled_at = loop.time()
                starting.cancel()
                done, _ = await asyncio.wait({starting}, timeout=WITHIN + 10)
                took = loop.time() - cancelled_at
        finally:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        assert done == {starting}, "the undo waited on the frozen broker"
        assert starting.cancelled()  # the start's cancellation is what the caller sees
        assert took <= WITHIN, took
        # Cut short: its connections closed and its group task ended, nothing left open.
        assert consumer._closed
        assert consumer._client._conns  # it had connected
        assert not any(conn.connected() for conn in consumer._client._conns.values())
        assert consumer._coordinator._coordination_task.done()
