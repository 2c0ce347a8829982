"""Fixtures of the dedup stage's unit tests."""

from __future__ import annotations

import pytest

from bridge.dedup import restore, task
from tests.unit.dedup.fakes import FakeLog


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> FakeLog:
    """The ingest partition a restore (and a task's start) reads: a fake log for the broker."""
    fake = FakeLog()
    monkeypatch.setattr(restore, "AIOKafkaConsumer", fake.consumer)
    monkeypatch.setattr(task, "AIOKafkaConsumer", fake.consumer)
    return fake
