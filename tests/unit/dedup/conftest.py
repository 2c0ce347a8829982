"""Fixtures of the dedup stage's unit tests."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from bridge.dedup import restore, task, transaction
from tests.unit.dedup.fakes import FakeClock, FakeLog, ProducerFactory


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> FakeLog:
    """The ingest partition a restore (and a task's start) reads: a fake log for the broker."""
    fake = FakeLog()
    monkeypatch.setattr(restore, "AIOKafkaConsumer", fake.consumer)
    monkeypatch.setattr(task, "AIOKafkaConsumer", fake.consumer)
    return fake


@pytest.fixture
def factory(monkeypatch: pytest.MonkeyPatch) -> ProducerFactory:
    """Producers start()ed by a StageProducer are fakes: no network."""
    made = ProducerFactory()
    monkeypatch.setattr(transaction, "GroupCommitProducer", made)
    return made


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The transactions' monotonic clock, moved only by the test (the wall clock left real)."""
    fake = FakeClock()
    monkeypatch.setattr(
        transaction, "time", SimpleNamespace(monotonic=fake.monotonic, time=time.time)
    )
    return fake
