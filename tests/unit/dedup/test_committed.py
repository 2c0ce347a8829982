"""Reading a new owner's committed offset: the stable read's decisions and retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
)

from bridge.dedup import committed as module
from bridge.dedup.committed import (
    Answer,
    Found,
    StableOffsetFetch,
    StableOffsets,
    StableUnsupportedError,
    UnstableSpells,
    offsets_partition,
    read_answer,
)

TP = TopicPartition("ingest", 3)


def response(
    *partitions: tuple[int, int, int], error: int = 0, topic: str = "ingest", metadata: str = ""
) -> Any:
    """An OffsetFetch v7 response: (partition, offset, error code) per partition."""
    rows: list[tuple[int, int, int, str, int, dict[int, bytes]]] = [
        (p, offset, -1, metadata, code, {}) for p, offset, code in partitions
    ]
    return SimpleNamespace(error_code=error, topics=[(topic, rows, {})])


def test_the_request_is_v7_and_asks_for_stable_offsets() -> None:
    built = StableOffsetFetch("group", TP).prepare({9: (1, 9)})
    assert (built.API_VERSION, built.FLEXIBLE_VERSION) == (7, True)
    assert built.to_object() == {
        "group_id": "group",
        "topics": [{"name": "ingest", "partition_indexes": [3], "tags": {}}],
        "require_stable": True,
        "tags": {},
    }


def test_a_broker_without_v7_is_told_apart() -> None:
    with pytest.raises(NotImplementedError):
        StableOffsetFetch("group", TP).prepare({9: (1, 6)})


def test_an_answer_gives_the_partitions_offset_and_none_for_nothing_committed() -> None:
    assert read_answer(response((2, 50, 0), (3, 140, 0)), TP) == Answer(offset=140, metadata="")
    assert read_answer(response((3, -1, 0)), TP) == Answer(offset=None)


def test_an_answer_carries_the_offsets_metadata() -> None:
    answer = read_answer(response((3, 140, 0), metadata="pcb1:140"), TP)
    assert answer == Answer(offset=140, metadata="pcb1:140")


@pytest.mark.parametrize(
    ("partition_error", "top_error", "expected"),
    [
        (88, 0, Answer(retry="unstable")),
        (0, 88, Answer(retry="unstable")),
        (0, 14, Answer(retry="coordinator_loading")),
        (0, 16, Answer(retry="coordinator_moved", relookup=True)),
        (0, 15, Answer(retry="coordinator_moved", relookup=True)),
    ],
)
def test_a_pending_commit_or_a_moving_coordinator_is_retried(
    partition_error: int, top_error: int, expected: Answer
) -> None:
    assert read_answer(response((3, 100, partition_error), error=top_error), TP) == expected


def test_any_other_error_is_raised() -> None:
    with pytest.raises(GroupAuthorizationFailedError):
        read_answer(response((3, 100, 0), error=30), TP)
    with pytest.raises(KafkaError, match="without ingest-3"):
        read_answer(response((2, 100, 0)), TP)


def answering(
    monkeypatch: pytest.MonkeyPatch,
    offsets: StableOffsets,
    answers: Iterator[Answer | Exception],
) -> list[int | None]:
    """Make `offsets` read `answers` in turn (an exception raised); the coordinator each read
    was sent to (None: looked up again before it), in order."""
    relooked: list[int | None] = []

    async def fetch(_: TopicPartition) -> Answer:
        relooked.append(offsets._coordinator)
        offsets._coordinator = 1
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(offsets, "_fetch", fetch)
    return relooked


async def test_the_stable_read_waits_out_a_pending_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_RETRY_SECONDS", 0)
    offsets = StableOffsets({}, "group")
    answers: Iterator[Answer | Exception] = iter(
        [
            Answer(retry="unstable"),
            KafkaConnectionError(),
            Answer(retry="coordinator_moved", relookup=True),
            Answer(offset=140),
        ]
    )
    relooked = answering(monkeypatch, offsets, answers)
    assert await offsets.committed(TP) == 140
    # A connection error or a moved coordinator looks the coordinator up again.
    assert relooked == [None, 1, None, None]


@pytest.mark.parametrize(
    ("retries", "said"),
    [
        # The coordinator's broker stopped: no transaction was pending, whatever the read met.
        ([NodeNotReadyError(), Answer(retry="coordinator_moved", relookup=True)], "coordinator"),
        ([Answer(retry="unstable"), KafkaConnectionError()], "transactional offset commit"),
    ],
)
async def test_a_read_retried_says_a_pending_commit_only_when_it_met_one(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    retries: list[Answer | Exception],
    said: str,
) -> None:
    monkeypatch.setattr(module, "_RETRY_SECONDS", 0)
    caplog.set_level(logging.INFO, logger=module.__name__)
    offsets = StableOffsets({}, "group")
    answering(monkeypatch, offsets, iter([*retries, Answer(offset=140)]))
    assert await offsets.committed(TP) == 140
    [line] = [r.getMessage() for r in caplog.records]
    assert said in line
    assert ("transactional offset commit" in line) == (said != "coordinator")


async def test_the_stable_read_gives_the_offset_with_its_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offsets = StableOffsets({}, "group")

    async def fetch(_: TopicPartition) -> Answer:
        return Answer(offset=140, metadata="pcb1:140")

    monkeypatch.setattr(offsets, "_fetch", fetch)
    assert await offsets.found(TP) == Found(140, "pcb1:140")


async def test_the_stable_read_gives_up_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_RETRY_SECONDS", 0)
    monkeypatch.setattr(module, "_DEADLINE_SECONDS", 0.05)
    offsets = StableOffsets({}, "group")

    async def fetch(_: TopicPartition) -> Answer:
        return Answer(retry="unstable")

    monkeypatch.setattr(offsets, "_fetch", fetch)
    with pytest.raises(TimeoutError, match="unstable"):
        await offsets.committed(TP)


async def test_a_broker_without_the_stable_read_is_named_too_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No plain-read fallback: without TxnOffsetCommit v3 (Kafka 2.5 too) the stage cannot commit.
    offsets = StableOffsets({}, "group")

    class OldClient:
        async def coordinator_lookup(self, *_: Any) -> int:
            return 1

        async def send(self, *_: Any) -> Any:
            raise IncompatibleBrokerVersion("OffsetFetch v7")

    monkeypatch.setattr(offsets, "_client", OldClient())
    with pytest.raises(StableUnsupportedError, match=r"needs Kafka 2\.5 or later"):
        await offsets.committed(TP)


@pytest.mark.parametrize(
    ("group", "partition"),
    [
        # Kafka's own placement (Java's hashCode, Utils.abs), worked out with the JDK.
        ("pinecall-bridge-dedup", 13),  # a negative hash: -1815262663
        ("connect-cluster", 13),
        ("\u00e9-gr\u00fcppe-\U0001f389", 26),  # a surrogate pair counts as two code units
        ("polygenelubricants", 0),  # Integer.MIN_VALUE, which Utils.abs takes to 0
    ],
)
def test_the_groups_offsets_partition_is_where_kafka_puts_it(group: str, partition: int) -> None:
    assert offsets_partition(group, 50) == partition


def test_an_unstable_spell_lasts_until_a_stable_answer_and_is_reported_once() -> None:
    spells = UnstableSpells()
    other = TopicPartition("ingest", 4)
    assert spells.longest(10.0) == 0
    assert spells.unstable(TP, 10.0) == 0
    assert spells.unstable(other, 12.0) == 0
    assert spells.unstable(TP, 14.0) == 4.0
    assert not spells.report(TP, 14.0, after=5)
    assert spells.report(TP, 15.0, after=5)
    assert not spells.report(TP, 16.0, after=5)
    assert spells.longest(16.0) == 6.0
    assert not spells.ended(other)  # never reported
    assert spells.ended(TP)
    assert spells.longest(16.0) == 0
    spells.unstable(TP, 20.0)  # a new spell is reported anew
    assert spells.report(TP, 25.0, after=5)


async def test_an_offset_unstable_past_report_after_is_logged_once_and_exported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(module, "_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(module, "_DEADLINE_SECONDS", 0.3)
    caplog.set_level(logging.INFO, logger=module.__name__)
    offsets = StableOffsets({}, "group", report_after=0.1)
    stable = asyncio.Event()

    async def fetch(_: TopicPartition) -> Answer:
        return Answer(offset=7) if stable.is_set() else Answer(retry="unstable")

    monkeypatch.setattr(offsets, "_fetch", fetch)
    # Across the reads' own deadlines, as the stage's start retries them: one spell, one line.
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await offsets.committed(TP)
    assert offsets.unstable_seconds() >= 0.5
    held = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [(r.group, r.partition, r.coordinator) for r in held] == [("group", 3, None)]  # type: ignore[attr-defined]
    assert "kafka-transactions.sh" in held[0].getMessage()
    assert "__consumer_offsets" in held[0].getMessage()
    stable.set()
    assert await offsets.committed(TP) == 7
    assert offsets.unstable_seconds() == 0
    assert any(
        "holding the dedup group's offset commit ended" in r.getMessage() for r in caplog.records
    )


async def test_a_partition_no_longer_started_leaves_no_spell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "_RETRY_SECONDS", 0)
    monkeypatch.setattr(module, "_DEADLINE_SECONDS", 0.05)
    offsets = StableOffsets({}, "group")

    async def fetch(_: TopicPartition) -> Answer:
        return Answer(retry="unstable")

    monkeypatch.setattr(offsets, "_fetch", fetch)
    with pytest.raises(TimeoutError):
        await offsets.committed(TP)
    assert offsets.unstable_seconds() > 0
    offsets.forget(TP)  # revoked while waiting: the next owner's wait is not this member's
    assert offsets.unstable_seconds() == 0
