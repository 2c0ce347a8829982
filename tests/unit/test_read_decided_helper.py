"""tests.integration.conftest.missing_told: events missing from a final read, told a loss or a
read problem from what the broker holds."""

from __future__ import annotations

from aiokafka import TopicPartition

from tests.integration.conftest import Read, Stopped, missing_told

MISSING = {"CA_roll_0:2", "CA_roll_0:3", "CA_roll_5:2"}
# Ingest partition 1 holds CA_roll_0's events, partition 4 CA_roll_5's.
INGEST = {
    "CA_roll_0:1": (1, 0),
    "CA_roll_0:2": (1, 3),
    "CA_roll_0:3": (1, 7),
    "CA_roll_5:2": (4, 2),
}
COMMITTED = {1: (9, 9), 4: (5, 5)}  # every ingest record decided
STOPPED = {TopicPartition("events", 0): Stopped(end=1, position=1, stable=1, high=1, records=1)}


def test_events_the_live_reader_saw_are_a_read_problem_and_where_each_stopped_is_told() -> None:
    told = missing_told(
        MISSING,
        Read([], STOPPED),
        live={"CA_roll_0:1", *MISSING},
        reread={"read_committed": {}, "read_uncommitted": {}},
        ingest=INGEST,
        committed=COMMITTED,
    )
    assert told.startswith("a READ problem: all were output")
    assert "the live output reader had seen 3 of them" in told
    assert "ingest partition 1: 2 at offsets 3-7, 2 below the group's committed 9 (end 9)" in told
    assert "ingest partition 4: 1 at offsets 2-2, 1 below the group's committed 5" in told
    assert "events-0: 1 records, position 1 of end 1; last fetch: LSO 1, high watermark 1" in told


def test_events_a_second_read_committed_finds_are_a_read_problem_too() -> None:
    told = missing_told(
        MISSING,
        Read(),
        live=None,
        reread={
            "read_committed": {"CA_roll_0:2": (0, 4)},
            "read_uncommitted": {"CA_roll_0:2": (0, 4), "CA_roll_0:3": (0, 9)},
        },
        ingest=INGEST,
        committed=COMMITTED,
    )
    assert told.startswith("partly a READ problem: 1 were output")
    assert "live output reader" not in told
    assert (
        "a second read_committed read finds 1 of them, output partition 0: 1 at offsets 4-4" in told
    )
    assert "read_uncommitted read finds 2 of them, output partition 0: 2 at offsets 4-9" in told


def test_events_only_a_read_uncommitted_finds_are_not_committed_output() -> None:
    told = missing_told(
        MISSING,
        Read(),
        live={"CA_roll_0:1"},
        reread={"read_committed": {}, "read_uncommitted": {"CA_roll_5:2": (3, 17)}},
        ingest=INGEST,
        committed=COMMITTED,
    )
    assert told.startswith("in the output's log but not read_committed")


def test_events_nowhere_in_the_output_whose_ingest_offsets_were_committed_are_a_loss() -> None:
    told = missing_told(
        MISSING,
        Read(),
        live=set(),
        reread={"read_committed": {}, "read_uncommitted": {}},
        ingest={event: where for event, where in INGEST.items() if event != "CA_roll_5:2"},
        committed=COMMITTED,
    )
    assert told.startswith("a LOSS: nowhere in the output's log")
    assert "the live output reader had seen 0 of them" in told
    assert "not in the ingest topic: 1" in told


def test_second_reads_that_failed_leave_it_undecided_and_say_why() -> None:
    told = missing_told(
        MISSING,
        Read(),
        live=None,
        reread={"read_committed": "nothing (KafkaTimeoutError())", "read_uncommitted": "x"},
        ingest="not read (KafkaTimeoutError())",
        committed="not read (KafkaTimeoutError())",
    )
    assert told.startswith("undecided: the second reads failed")
    assert "a second read_committed read finds nothing (KafkaTimeoutError())" in told
    assert "ingest: not read (KafkaTimeoutError())" in told
