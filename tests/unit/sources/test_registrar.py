"""The registrar against a fake of Pinecall's `/v1/webhook`: register, re-check, register again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from bridge.metrics import Metrics
from bridge.sources.registrar import Registrar
from tests.polling import until
from tests.unit.sources.pinecall_api import FakeApi

OURS = "https://bridge/webhooks/pinecall"
THEIRS = "https://crm.example.com/pinecall"


@pytest.fixture
async def fake() -> AsyncIterator[FakeApi]:
    async with FakeApi() as api:
        yield api


def registrar(fake: FakeApi, metrics: Metrics, **api: object) -> Registrar:
    settings = fake.settings.model_copy(update={"webhook_recheck_seconds": 0.05, **api})
    return Registrar(settings, OURS, "s", metrics)


@contextlib.asynccontextmanager
async def running(keeper: Registrar) -> AsyncIterator[Registrar]:
    task = asyncio.create_task(keeper.run())
    try:
        yield keeper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("pinecall_bridge_webhook_registered")


async def test_it_registers_and_puts_back_a_deleted_webhook(fake: FakeApi) -> None:
    metrics = Metrics()
    assert gauge(metrics) is None  # exported only by a process that registers the webhook
    keeper = registrar(fake, metrics)
    assert gauge(metrics) == 0  # then from the start: 0 until Pinecall took our URL
    async with running(keeper):
        await until(lambda: fake.hook is not None)
        await until(lambda: gauge(metrics) == 1)
        fake.hook = None  # someone ran `webhooks delete`, or Pinecall lost it
        await until(lambda: fake.hook == {"url": OURS, "secret": "s"})
        await until(lambda: gauge(metrics) == 1)
        assert fake.puts == 2


async def test_a_put_back_webhook_carries_the_secret_of_now(fake: FakeApi) -> None:
    # The webhook secrets were reloaded from their file after the first put: the old one is gone.
    secret = "before"
    settings = fake.settings.model_copy(update={"webhook_recheck_seconds": 0.05})
    async with running(Registrar(settings, OURS, lambda: secret, Metrics())):
        await until(lambda: fake.hook == {"url": OURS, "secret": "before"})
        secret = "after"
        fake.hook = None
        await until(lambda: fake.hook == {"url": OURS, "secret": "after"})


async def test_our_url_put_back_unsigned_is_signed_again(
    fake: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    # Unsigned posts are answered 401, final for Pinecall: the URL alone does not say it is ours.
    async with running(registrar(fake, Metrics())):
        await until(lambda: fake.puts == 1)
        fake.hook = {"url": OURS, "secret": None}
        await until(lambda: fake.hook == {"url": OURS, "secret": "s"})
        assert any("but is unsigned" in message for message in caplog.messages)


async def test_an_unsigned_bridge_leaves_its_unsigned_webhook_alone(fake: FakeApi) -> None:
    settings = fake.settings.model_copy(update={"webhook_recheck_seconds": 0.05})
    async with running(Registrar(settings, OURS, "", Metrics())):
        await until(lambda: fake.hook == {"url": OURS, "secret": None})
        gets = fake.gets
        await until(lambda: fake.gets > gets + 2)
        assert fake.puts == 1


async def test_a_webhook_moved_elsewhere_turns_the_gauge_to_0_and_is_left_alone(
    fake: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    async with running(registrar(fake, metrics)):
        await until(lambda: gauge(metrics) == 1)
        fake.hook = {"url": THEIRS, "secret": None}
        await until(lambda: gauge(metrics) == 0)
        await until(lambda: "webhook registration failed; retrying" in caplog.messages)
        assert fake.hook == {"url": THEIRS, "secret": None}
        assert fake.puts == 1
        moved = [r for r in caplog.records if r.getMessage().startswith("the organisation's")]
        assert moved[0].__dict__["found_url"] == THEIRS


async def test_an_unreachable_pinecall_does_not_unregister(
    fake: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    async with running(registrar(fake, metrics)):
        await until(lambda: gauge(metrics) == 1)
        fake.failing = True
        await until(lambda: "could not re-check the webhook" in caplog.messages)
        assert gauge(metrics) == 1
        fake.failing = False
        gets = fake.gets
        await until(lambda: fake.gets > gets)  # it goes on checking
        assert (fake.puts, gauge(metrics)) == (1, 1)


async def test_without_re_checks_it_ends_once_registered(fake: FakeApi) -> None:
    metrics = Metrics()
    done = registrar(fake, metrics, webhook_recheck_seconds=0)
    await asyncio.wait_for(done.run(), 5)
    assert done.registered.is_set()
    assert (fake.puts, fake.gets, gauge(metrics)) == (1, 1, 1)


async def test_start_up_failures_are_retried_until_pinecall_answers(fake: FakeApi) -> None:
    metrics = Metrics()
    fake.failing = True
    async with running(registrar(fake, metrics)):
        await asyncio.sleep(0.3)
        assert (fake.hook, gauge(metrics)) == (None, 0)
        fake.failing = False
        await until(lambda: gauge(metrics) == 1)
        assert fake.hook == {"url": OURS, "secret": "s"}
