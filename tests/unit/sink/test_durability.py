"""The min.insync.replicas the bridge creates its topics with, and what it says of existing ones."""

from __future__ import annotations

import logging

import pytest

from bridge.sink.durability import durability_problem, min_insync_for


@pytest.mark.parametrize(
    ("factor", "cluster_default", "created_with"),
    [
        (1, 1, 1),  # one copy is all there is
        (2, 1, 1),  # 2 of 2 would stop every write while one broker restarts
        (3, 1, 2),  # one broker may be down and writes go on, each held twice
        (3, None, 2),  # the cluster's default unreadable: two all the same
        (3, 2, 2),
        (3, 3, None),  # the cluster asks more already: left to it
        (2, 3, None),
    ],
)
def test_topics_are_created_to_hold_two_copies_of_what_is_acknowledged(
    factor: int, cluster_default: int | None, created_with: int | None
) -> None:
    assert min_insync_for(factor, cluster_default) == created_with


@pytest.mark.parametrize(
    ("factor", "min_insync", "level"),
    [
        (3, "1", logging.WARNING),  # the leader alone can acknowledge
        (2, "1", None),  # the most that leaves a broker free to restart
        (3, "2", None),
        (2, "2", logging.WARNING),  # every broker restart stops writes
        (3, "3", logging.WARNING),
        (1, "1", None),  # a single copy: min.insync.replicas cannot help
        (1, "2", logging.ERROR),  # every write refused
        (3, "4", logging.ERROR),
        (3, None, None),  # not read (no DescribeConfigs right): nothing to say
        (3, "x", None),
    ],
)
def test_existing_topics_that_may_lose_or_refuse_acknowledged_records_are_told(
    factor: int, min_insync: str | None, level: int | None
) -> None:
    found = durability_problem(factor, min_insync)
    assert (found[0] if found else None) == level
    if found is not None:
        assert "min.insync.replicas" in found[1]
