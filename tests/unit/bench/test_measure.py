"""The bench's scrape parsing: one process, or a pod whose workers each add a `worker` label."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from typing import cast

import pytest

from bench import measure

POD = b"""# HELP pinecall_bridge_publish_duration_seconds Receipt to ack.
# TYPE pinecall_bridge_publish_duration_seconds histogram
pinecall_bridge_publish_duration_seconds_bucket{le="0.005",worker="0"} 3.0
pinecall_bridge_publish_duration_seconds_bucket{le="+Inf",worker="0"} 4.0
pinecall_bridge_publish_duration_seconds_bucket{le="0.005",worker="1"} 5.0
pinecall_bridge_publish_duration_seconds_bucket{le="+Inf",worker="1"} 7.0
pinecall_bridge_dedup_transactions_total{outcome="committed",worker="0"} 10.0
pinecall_bridge_dedup_transactions_total{outcome="aborted",worker="0"} 99.0
pinecall_bridge_dedup_transactions_total{outcome="committed",worker="1"} 2.0
pinecall_bridge_dedup_partitions_owned{worker="0"} 7.0
pinecall_bridge_dedup_partitions_owned{worker="1"} 5.0
pinecall_bridge_dedup_partitions_owned_extra 100.0
pinecall_bridge_dedup_entries{worker="0"} 300.0
pinecall_bridge_dedup_entries{worker="1"} 200.0
pinecall_bridge_dedup_window_bytes{worker="0"} 45000.0
pinecall_bridge_dedup_window_bytes{worker="1"} 30000.0
pinecall_bridge_event_loop_lag_seconds_bucket{le="0.01",worker="0"} 40.0
pinecall_bridge_event_loop_lag_seconds_bucket{le="+Inf",worker="0"} 41.0
"""


def test_samples_match_the_name_exactly_and_read_every_label() -> None:
    owned = measure.samples(POD, "pinecall_bridge_dedup_partitions_owned")
    assert owned == [({"worker": "0"}, 7.0), ({"worker": "1"}, 5.0)]
    assert measure.samples(b"up 1\n", "up") == [({}, 1.0)]
    escaped = b'm{path="a\\"b",le="1"} 2\n'
    assert measure.samples(escaped, "m") == [({"path": 'a"b', "le": "1"}, 2.0)]


def test_a_pods_workers_are_added_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure, "_scrape", lambda _port: POD)
    assert measure.histogram(1) == [(0.005, 8.0), (float("inf"), 11.0)]
    assert measure.histogram(1, measure.LOOP_LAG) == [(0.01, 40.0), (float("inf"), 41.0)]
    assert measure.transactions(1) == 12.0
    assert measure.owned(1) == 12
    assert measure.dedup_entries(1) == 500.0
    assert measure.dedup_window_bytes(1) == 75000.0


def test_the_highest_bucket_is_that_of_the_largest_observation_between_two_scrapes() -> None:
    before = [(0.01, 10.0), (0.05, 12.0), (0.1, 12.0), (float("inf"), 13.0)]
    # Between them: 5 within 10 ms and 1 in (50, 100] ms; the earlier ones above it don't count.
    after = [(0.01, 15.0), (0.05, 17.0), (0.1, 18.0), (float("inf"), 19.0)]
    assert measure.highest_bucket(before, after) == 0.1
    assert math.isnan(measure.highest_bucket(before, before))
    assert measure.highest_bucket([], [(0.01, 0.0), (float("inf"), 2.0)]) == float("inf")


def test_a_process_tree_counts_its_children() -> None:
    busy = "import time\nx = 0\nfor _ in range(3_000_000): x += 1\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        deadline = time.monotonic() + 20
        while measure.cpu_seconds(child.pid) < 0.1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in measure.tree(os.getpid())
        own = measure.cpu_seconds(os.getpid())
        assert measure.tree_cpu_seconds(os.getpid()) >= own + measure.cpu_seconds(child.pid) - 0.02
        assert measure.peak_rss(os.getpid()) > measure.rss(os.getpid())
    finally:
        child.kill()
        child.wait()


class _Running:
    """A kcat process that stays up."""

    def poll(self) -> None:
        return None


def _consumer_of(read: measure.ReadBack) -> measure.Consumer:
    consumer = measure.Consumer.__new__(measure.Consumer)
    consumer.read = read
    consumer._lock = threading.Lock()
    consumer._proc = cast(subprocess.Popen[bytes], _Running())
    return consumer


def test_a_double_after_the_last_original_still_counts_in_its_step() -> None:
    read = measure.ReadBack()
    read.add(0, 0.0)
    read.add(1, 0.0)
    consumer = _consumer_of(read)

    def late_double() -> None:
        time.sleep(0.7)  # later than the old fixed 0.5 s grace
        with consumer._lock:
            read.add(1, 0.0)

    thread = threading.Thread(target=late_double)
    thread.start()
    consumer.wait_for(2, timeout=10.0, settle=1.0)
    thread.join()
    assert read.copies == {0: 1, 1: 2}
