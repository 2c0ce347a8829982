"""Fixtures shared by the unit tests of several packages."""

from __future__ import annotations

import pytest

from bridge.sink import kafka
from tests.unit.sink.fakes import FakeAdmin


@pytest.fixture
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Admin clients are FakeAdmins; every topic known to every broker unless a test says."""
    FakeAdmin.made = []
    FakeAdmin.misses = 1
    FakeAdmin.late = set()
    FakeAdmin.refused = set()
    FakeAdmin.values = {}
    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", FakeAdmin)
