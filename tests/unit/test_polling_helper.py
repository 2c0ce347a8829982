"""tests.polling.until: a condition awaited when it is a coroutine, a failure that says what."""

import pytest

from tests.polling import until


async def test_an_async_condition_is_awaited_until_it_holds() -> None:
    checks: list[int] = []

    async def third_time() -> bool:
        checks.append(len(checks))
        return len(checks) == 3

    await until(third_time, within=5, every=0)
    assert len(checks) == 3


async def test_a_condition_that_never_holds_fails_saying_what_was_seen_last() -> None:
    seen: list[int] = []

    def never() -> bool:
        seen.append(len(seen))
        return False

    with pytest.raises(AssertionError, match=r"never held within 0.05 s: checked \d+ times"):
        await until(never, within=0.05, every=0.01, what=lambda: f"checked {len(seen)} times")
