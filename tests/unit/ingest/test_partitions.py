"""The ingest topic's partition count: what differs from the settings or changes is told once."""

from __future__ import annotations

import logging

from bridge.ingest.partitions import PartitionWatch


def test_a_count_as_configured_says_nothing() -> None:
    watch = PartitionWatch(12)
    assert watch.observe(12) is None
    assert watch.observe(12) is None
    assert watch.seen == 12


def test_an_unknown_count_says_nothing_and_is_not_remembered() -> None:
    watch = PartitionWatch(12)
    assert watch.observe(0) is None
    assert watch.seen == 0
    # The first count known is still compared with the settings.
    found = watch.observe(6)
    assert found is not None
    assert (found.level, found.facts) == (logging.WARNING, {"partitions": 6, "configured": 12})


def test_a_topic_made_with_another_count_is_a_warning_once() -> None:
    watch = PartitionWatch(3)
    found = watch.observe(24)
    assert found is not None
    assert found.level == logging.WARNING
    assert "BRIDGE_TOPICS__INGEST_PARTITIONS" in found.message
    assert found.facts == {"partitions": 24, "configured": 3}
    assert watch.observe(24) is None


def test_a_change_while_running_is_an_error_whatever_the_settings() -> None:
    watch = PartitionWatch(12)
    assert watch.observe(12) is None
    found = watch.observe(24)
    assert found is not None
    assert found.level == logging.ERROR
    assert "changed while running" in found.message
    assert found.facts == {"partitions": 24, "partitions_before": 12}
    # A metadata read that knows nothing is no change back.
    assert watch.observe(0) is None
    assert watch.observe(24) is None
    assert watch.seen == 24
