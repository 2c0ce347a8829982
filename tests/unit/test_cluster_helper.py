"""tests.integration.cluster: the ports a cluster takes and the fencing time it runs with."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.cluster import (
    PORTS,
    Cluster,
    cluster_port,
    free_port_range,
    property_of,
)
from tests.integration.conftest import REPO


def test_the_last_occurrence_of_a_property_wins_as_kafka_reads_it() -> None:
    text = "a=1\n# a=3\nb = 2\n\n# ---- overlay\na = 4\n! a=5\n"
    assert property_of(text, "a") == "4"
    assert property_of(text, "b") == "2"
    assert property_of(text, "c") is None


def test_the_session_timeout_is_read_from_the_config_a_node_runs_with(tmp_path: Path) -> None:
    (tmp_path / "node1").mkdir()
    rendered = tmp_path / "node1" / "server.properties"
    cluster = Cluster(29000, tmp_path)
    rendered.write_text("node.id=1\n# ---- overlay\nbroker.session.timeout.ms=6000\n")
    assert cluster.broker_session_timeout() == 6.0
    rendered.write_text("node.id=1\n")
    assert cluster.broker_session_timeout() == 9.0  # Kafka's default


def test_the_cluster_template_sets_the_session_timeout_it_is_judged_by() -> None:
    template = (REPO / "tools" / "kafka" / "cluster.properties.in").read_text()
    assert property_of(template, "broker.session.timeout.ms") == "9000"


def test_a_given_base_port_is_used_only_if_the_whole_range_is_free() -> None:
    base = free_port_range(PORTS)
    assert cluster_port(base) == base
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + PORTS - 1))
        with pytest.raises(RuntimeError, match=f"\\[{base + PORTS - 1}\\] already in use"):
            cluster_port(base)
    assert 20000 <= cluster_port() <= 29000
