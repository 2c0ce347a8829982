"""The backfill command's own words: what it tells the operator about the dedup window."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from bridge import backfill
from bridge.backfill import BackfillReport, run_backfill
from bridge.config import load_settings
from bridge.sources.calllog.calllist import CallRow


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


async def test_calls_the_list_gives_no_start_time_are_named_not_dropped_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def list_calls(*_: Any, **__: Any) -> list[CallRow]:
        return [
            CallRow("CA_1", live=True, last_seq=None, started_at=100.0, ended_at=None),
            CallRow("CA_2", live=True, last_seq=None, started_at=None, ended_at=None),
        ]

    monkeypatch.setattr(backfill, "list_calls", list_calls)
    settings = load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"})
    caplog.set_level(logging.WARNING, logger="bridge.backfill")
    async with aiohttp.ClientSession() as session:
        assert await backfill._calls_since(settings, session, 50.0) == ["CA_1"]
    [warning] = caplog.records
    assert warning.__dict__["calls"] == ["CA_2"]
