"""tests.polling.until: a condition awaited when it is a coroutine, a failure that says what;
until_kafka: a retriable Kafka error is "not yet"."""

import pytest
from aiokafka.errors import KafkaConnectionError, ProducerFenced

from tests.polling import until, until_kafka


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


async def test_until_kafka_takes_a_retriable_error_for_not_yet() -> None:
    answers: list[BaseException | bool] = [KafkaConnectionError(), True]

    async def answer() -> bool:
        said = answers.pop(0)
        if isinstance(said, BaseException):
            raise said
        return said

    await until_kafka(answer, within=5, every=0, what=lambda: "")
    assert answers == []


async def test_until_kafka_raises_a_lasting_error_at_once() -> None:
    async def fenced() -> bool:
        raise ProducerFenced()

    with pytest.raises(ProducerFenced):
        await until_kafka(fenced, within=5, every=0, what=lambda: "")


async def test_until_kafka_fails_naming_the_last_error_unless_a_check_answered_since() -> None:
    answers: list[BaseException | bool] = [KafkaConnectionError("node 2 gone")]

    async def answer() -> bool:
        said = answers.pop(0) if answers else False
        if isinstance(said, BaseException):
            raise said
        return said

    with pytest.raises(AssertionError, match=r": lagging, last error None$"):
        await until_kafka(answer, within=0.05, every=0.01, what=lambda: "lagging")

    async def never_answers() -> bool:
        raise KafkaConnectionError("node 2 gone")

    with pytest.raises(AssertionError, match=r": lagging, last error KafkaConnectionError"):
        await until_kafka(never_answers, within=0.05, every=0.01, what=lambda: "lagging")
