"""bench.senderwake: its old variant undoes both of the sender's shims, its control neither."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from bench import senderwake
from bridge.sink import drain
from tests.sockets import refusing_address


async def test_the_old_variant_undoes_both_shims_and_the_control_neither() -> None:
    producer = AIOKafkaProducer(bootstrap_servers=refusing_address())
    try:
        with senderwake.VARIANTS["wake"]():
            assert not drain.wake_only_when_needed(producer)
            drain.due_within_resolution(object(), ())  # the real one would read its batches
        with senderwake.VARIANTS["control"]():
            assert drain.wake_only_when_needed(producer)
        assert drain.wake_only_when_needed(producer)
    finally:
        await producer.stop()
