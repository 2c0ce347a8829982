"""Fixtures of the dedup stage's unit tests."""

from __future__ import annotations

import pytest

from bridge.dedup import restore
from tests.unit.dedup.fakes import FakeLog


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> FakeLog:
    """The ingest partition a restore reads: a fake log in place of the broker."""
    fake = FakeLog()
    monkeypatch.setattr(restore, "AIOKafkaConsumer", fake.consumer)
    return fake
