"""bench.dedupstage's instrumentation: timed, the stage's calls answer as they did."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from bench import dedupstage
from bridge.dedup.task import PartitionTask
from bridge.dedup.transaction import StageProducer


async def test_a_timed_commit_returns_what_the_commit_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stage intersects the result with the partitions it touched: a None crashed its loop.
    left_out = frozenset({TopicPartition("t", 1)})

    async def commit(out: Any, offsets: Any, group: Any) -> frozenset[TopicPartition]:
        return left_out

    monkeypatch.setattr(StageProducer, "commit", commit)
    monkeypatch.setattr(PartitionTask, "process", PartitionTask.process)  # put back after
    spans = dedupstage.instrument()
    assert await StageProducer.commit(object(), {}, object()) == left_out  # type: ignore[arg-type]
    assert len(spans["commit"]) == 1
