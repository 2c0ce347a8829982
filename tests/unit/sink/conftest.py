"""Fixtures of the sink's unit tests."""

from __future__ import annotations

import pytest

from bridge.sink import kafka
from tests.unit.sink.fakes import FakeProducer


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink makes FakeProducers, none made yet, none refusing to start."""
    FakeProducer.made = []
    FakeProducer.start_errors = []
    monkeypatch.setattr(kafka, "AIOKafkaProducer", FakeProducer)
