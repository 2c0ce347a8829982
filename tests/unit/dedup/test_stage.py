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


class Listener:
    """Records what the stage tells the call-log source."""

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []

    def partition_owned(self, partition: int, progress: object) -> None:
        self.told.append(("owned", partition))

    def partitions_assigned(self, partitions: set[int]) -> None:
        self.told.append(("assigned", partitions))

    def partition_lost(self, partition: int) -> None:
        self.told.append(("lost", partition))


async def test_the_listener_hears_of_assignments_and_losses() -> None:
    stage = DedupStage(DedupSettings(), "ingest", {}, Metrics())
    listener = Listener()
    stage.listener = listener
    await stage.assigned({TopicPartition("ingest", 1), TopicPartition("ingest", 3)})
    await stage._step(cast(PartitionTask, FakeTask()), failing(PartitionLostError("timeout")))
    assert listener.told == [("assigned", {1, 3}), ("lost", 4)]
