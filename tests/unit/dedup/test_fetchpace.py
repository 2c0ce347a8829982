"""The dedup stage's fetch shapes, the commit's wait for a held fetch, and aiokafka's fetcher."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher

from bridge.dedup.fetchpace import (
    HELD_MIN_BYTES,
    MARGIN_MS,
    OWED_MS,
    FetchPace,
    fetch_shape,
    fetch_wait_ms,
    pace,
)


@pytest.mark.parametrize(
    ("age", "wait"), [(None, 100), (0.0, 100), (0.0301, 70), (0.1, 0), (0.5, 0)]
)
def test_fetch_wait_ms(age: float | None, wait: int) -> None:
    assert fetch_wait_ms(100, age) == wait


def test_with_no_transaction_open_a_fetch_answers_at_its_first_record() -> None:
    assert fetch_shape(100, None, 500) == (500, 1)


def test_with_a_transaction_open_a_fetch_is_held_until_just_before_it_is_due() -> None:
    assert fetch_shape(100, 0.0, 500) == (100 - MARGIN_MS, HELD_MIN_BYTES)
    assert fetch_shape(100, 0.0305, 500) == (69 - MARGIN_MS, HELD_MIN_BYTES)


@pytest.mark.parametrize("age", [0.090, 0.0995, 0.1, 0.5])
def test_a_transaction_nearly_or_over_due_takes_the_first_record_as_it_comes(age: float) -> None:
    assert fetch_shape(100, age, 500) == (500, 1)


class _Age:
    def __init__(self, age: float | None) -> None:
        self.age = age

    def __call__(self) -> float | None:
        return self.age


def test_a_commit_due_waits_for_a_held_fetch_still_out_but_not_past_owed_ms() -> None:
    age = _Age(0.0)
    fetches = FetchPace(100, 500, age)
    assert fetches.shape() == (90, HELD_MIN_BYTES)
    assert fetches.held
    assert not fetches.owed(0.1)
    assert fetches.wait_ms(0.1) == 0  # none out: due at once
    fetches.out = 1
    assert fetches.owed(0.1)
    assert fetches.wait_ms(0.1) == OWED_MS
    assert fetches.wait_ms(0.1 + OWED_MS / 2000) == OWED_MS // 2
    assert not fetches.owed((100 + OWED_MS) / 1000)
    assert fetches.wait_ms(0.2) == 0
    assert fetches.wait_ms(0.05) == 50  # not yet due: the interval's rest, held fetch or not
    assert fetches.wait_ms(None) == 100
    age.age = 0.095
    assert fetches.shape() == (500, 1)
    assert not fetches.held


class _Consumer:
    def __init__(self, fetcher: Any) -> None:
        self._fetcher = fetcher


class _Fetcher(Fetcher):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's own fetcher, built without its routine, sending through `answer`."""

    def __init__(self) -> None:
        self._fetch_max_wait_ms = 500
        self._fetch_min_bytes = 1
        self.answer: asyncio.Future[bool] | None = None

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        assert self.answer is not None
        return await self.answer


def test_the_fetcher_reads_its_settings_from_the_pace_at_each_request() -> None:
    age = _Age(0.0)
    fetches = FetchPace(100, 500, age)
    fetcher = _Fetcher()
    assert pace(_Consumer(fetcher), fetches)
    assert isinstance(fetcher, _Fetcher)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (90, HELD_MIN_BYTES)
    age.age = None
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (500, 1)
    # aiokafka's own assignments (its __init__) change nothing once paced
    fetcher._fetch_min_bytes = 7
    assert fetcher._fetch_min_bytes == 1


async def test_a_held_fetch_is_counted_out_until_its_answer_is_in() -> None:
    age = _Age(0.0)
    fetches = FetchPace(100, 500, age)
    fetcher = _Fetcher()
    assert pace(_Consumer(fetcher), fetches)
    fetcher.answer = asyncio.get_running_loop().create_future()
    assert fetcher._fetch_max_wait_ms == 90  # a held request built, then sent
    held = asyncio.create_task(fetcher._proc_fetch_request(None, 0, None))
    await asyncio.sleep(0)
    assert fetches.out == 1
    fetcher.answer.set_result(True)
    assert await held
    assert fetches.out == 0
    # a fetch cancelled while out (a revocation, a stop) is not owed either
    fetcher.answer = asyncio.get_running_loop().create_future()
    cut = asyncio.create_task(fetcher._proc_fetch_request(None, 0, None))
    await asyncio.sleep(0)
    assert fetches.out == 1
    cut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cut
    assert fetches.out == 0
    # one answered at its first record is never owed
    age.age = None
    assert fetcher._fetch_min_bytes == 1
    fetcher.answer = asyncio.get_running_loop().create_future()
    plain = asyncio.create_task(fetcher._proc_fetch_request(None, 0, None))
    await asyncio.sleep(0)
    assert fetches.out == 0
    fetcher.answer.set_result(False)
    assert not await plain


def test_a_consumer_paced_again_keeps_its_class() -> None:
    fetcher = _Fetcher()
    assert pace(_Consumer(fetcher), FetchPace(100, 500, _Age(None)))
    kind = type(fetcher)
    assert pace(_Consumer(fetcher), FetchPace(50, 500, _Age(0.0)))
    assert type(fetcher) is kind
    assert fetcher._fetch_max_wait_ms == 40
    other = _Fetcher()
    assert pace(_Consumer(other), FetchPace(100, 500, _Age(None)))
    assert type(other) is kind


def test_aiokafka_builds_each_fetch_from_the_two_settings_and_sends_it_in_proc_fetch() -> None:
    """If aiokafka stops reading these when it builds and sends a fetch, pacing does nothing."""
    built = inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms" in built
    assert "self._fetch_min_bytes" in built
    routine = inspect.getsource(Fetcher._fetch_requests_routine)
    assert "self._proc_fetch_request(" in routine


def test_a_fetcher_without_those_parts_is_left_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    class Bare:
        pass

    bare = Bare()
    fetches = FetchPace(100, 500, _Age(None))
    with caplog.at_level(logging.WARNING):
        assert not pace(_Consumer(bare), fetches)
        assert not pace(_Consumer(None), fetches)
    assert type(bare) is Bare
    assert "fetcher has changed" in caplog.text
