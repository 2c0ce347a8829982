from __future__ import annotations

from typing import cast

from aiokafka import TopicPartition

from bridge.config import DedupSettings
from bridge.dedup.stage import DedupStage
from bridge.dedup.task import PartitionLostError, PartitionTask
from bridge.metrics import Metrics


class FakeTask:
    def __init__(self) -> None:
        self.tp = TopicPartition("ingest", 4)
        self.discarded = False

    async def discard(self) -> None:
        self.discarded = True


def lost(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "pinecall_bridge_dedup_partitions_lost_total", {"reason": reason}
    )
    return value or 0.0


async def failing(error: BaseException) -> None:
    raise error


async def run_step(error: BaseException) -> tuple[FakeTask, Metrics]:
    metrics = Metrics()
    stage = DedupStage(DedupSettings(), "ingest", {}, metrics)
    task = FakeTask()
    await stage._step(cast(PartitionTask, task), failing(error))
    return task, metrics


async def test_a_lost_partition_drops_its_task() -> None:
    task, metrics = await run_step(PartitionLostError("fenced"))
    assert task.discarded
    assert lost(metrics, "fenced") == 1


async def test_an_unexpected_error_loses_one_partition_instead_of_killing_the_stage() -> None:
    task, metrics = await run_step(ValueError("a bug"))
    assert task.discarded
    assert lost(metrics, "error") == 1
