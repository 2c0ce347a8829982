"""CPU per record of the ingest producer's sender, against a real broker: two variants paired.

    python -m bench.senderwake --bootstrap 127.0.0.1:9092 [--variant wake|control] [--rate 1000]
                               [--seconds 4] [--rounds 12]

What runs: an `AIOKafkaProducer` with the ingest producer's settings (idempotent, acks=all, linger
5 ms, the bridge's partitioner) and `bridge.sink.drain`'s shims, sending 400-byte records keyed by
200 calls over a 12-partition topic at `--rate` (paced by the loop's clock, each send awaited as
the pipeline does, every delivery awaited at the end); a fresh producer per batch, its start and
stop not timed. The old variant undoes `due_within_resolution` and `wake_only_when_needed` (the
sender woken for every new batch, and a batch lingering under uvloop's 1 ms timer resolution
re-armed a timer that fired at once). Besides the CPU, the sender's drains per record. The
rounds, ABBA order and control are `bench.paired`'s; the broker is shared, so only the paired
ratios mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.paired import paired, patched, report, run
from bridge.partitioning import partition_for
from bridge.sink import drain

PARTITIONS = 12
CALLS = 200


def _old() -> contextlib.AbstractContextManager[None]:
    return patched(
        (drain, "due_within_resolution", lambda accumulator, muted: None),
        (drain, "wake_only_when_needed", lambda producer: False),
    )


@contextlib.contextmanager
def _control() -> Iterator[None]:
    yield


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "wake": _old,
    "control": _control,
}


class Sending:
    """One batch's producer and records; `drains` counts its sender's drains per record."""

    def __init__(self, bootstrap: str, topic: str, rate: float, seconds: float) -> None:
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.count = int(rate * seconds)
        self.keys = [b"CA_%016x" % random.getrandbits(64) for _ in range(CALLS)]
        self.drains: dict[str, list[float]] = {"old": [], "new": []}

    async def timed(self, _: object) -> float:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=262_144,
            partitioner=partition_for,
        )
        drain.drain_whole_brokers(producer)
        which = "new" if drain.wake_only_when_needed(producer) else "old"
        accumulator: Any = producer._message_accumulator
        inner = accumulator.drain_by_nodes
        calls = 0

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return inner(*args, **kwargs)

        accumulator.drain_by_nodes = counted
        await producer.start()
        try:
            loop = asyncio.get_running_loop()
            value = b"v" * 400
            deliveries = []
            start, cpu, calls = loop.time(), time.process_time(), 0
            for i in range(self.count):
                delay = start + i / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                key = self.keys[i % CALLS]
                deliveries.append(await producer.send(self.topic, value, key=key))
            await asyncio.gather(*deliveries)
            cpu = time.process_time() - cpu
            self.drains[which].append(calls / self.count)
            return cpu
        finally:
            await producer.stop()


async def main(args: argparse.Namespace) -> None:
    topic = f"bench-senderwake-{int(time.time())}"
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    sending = Sending(args.bootstrap, topic, args.rate, args.seconds)
    outcome = await paired(
        VARIANTS[args.variant], lambda n, k: None, sending.timed, args.rounds, sending.count
    )
    print(report(args.variant, outcome, unit="record"))
    medians = {which: statistics.median(d) for which, d in sending.drains.items() if d}
    drains = ", ".join(f"{which} {m:.2f}" for which, m in medians.items())
    print(f"sender drains per record, median: {drains}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench.senderwake")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="wake")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=12)
    run(main(parser.parse_args()))
