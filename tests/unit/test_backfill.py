"""The backfill command's own words: what it tells the operator about the dedup window."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from rich.console import Console

from bridge import backfill
from bridge.backfill import BackfillReport, run_backfill
from bridge.config import load_settings


def told(monkeypatch: pytest.MonkeyPatch, since: float | None) -> str:
    async def nothing_to_do(*_: Any, **__: Any) -> BackfillReport:
        return BackfillReport()

    monkeypatch.setattr(backfill, "backfill_calls", nothing_to_do)
    out = io.StringIO()
    settings = load_settings(webhook={"secrets": ["s"]}, dedup={"ttl_seconds": 900})
    assert run_backfill(settings, ["CA_1"], Console(file=out, width=400), since=since) == 0
    return out.getvalue()


def test_a_backfill_reaching_past_the_dedup_window_says_it_publishes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    far = told(monkeypatch, since=time.time() - 7 * 86_400)
    assert "published again, with the same CloudEvent ids" in far
    near = told(monkeypatch, since=time.time() - 60)
    assert "published again, with the same CloudEvent ids" not in near
    # Whatever the reach, the summary does not promise what the window cannot keep.
    assert "drops those it saw in the last 900 s" in near
