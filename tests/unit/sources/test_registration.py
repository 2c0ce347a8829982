"""Webhook registration against a fake of Pinecall's `/v1/webhook` over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from pydantic import SecretStr

from bridge.config import PinecallSettings
from bridge.sources import registration
from bridge.sources.registration import (
    OrgWebhook,
    RegistrationError,
    WebhookRegistry,
    WebhookTakenError,
    next_step,
    parse_webhook,
)
from tests.sockets import refusing_address
from tests.unit.sources.pinecall_api import FakeApi

OURS = "https://bridge/webhooks/pinecall"


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, WebhookRegistry]]:
    async with FakeApi() as fake, aiohttp.ClientSession() as session:
        yield fake, WebhookRegistry(session, fake.settings)


async def test_ensure_points_an_unset_webhook_at_the_bridge(
    api: tuple[FakeApi, WebhookRegistry],
) -> None:
    fake, registry = api
    done = await registry.ensure(OURS, "s")
    assert (done.previous, done.took_over) == (None, False)
    assert fake.hook == {"url": OURS, "secret": "s"}


async def test_ensure_puts_again_so_a_rotated_secret_reaches_the_platform(
    api: tuple[FakeApi, WebhookRegistry],
) -> None:
    # The secret is never read back: with the URL already ours, only a PUT makes the platform
    # sign with the secret the bridge now verifies first.
    fake, registry = api
    await registry.ensure(OURS, "old")
    done = await registry.ensure(OURS, "new")
    assert done.previous == OrgWebhook(OURS, signed=True)
    assert not done.took_over
    assert fake.hook == {"url": OURS, "secret": "new"}
    assert fake.puts == 2


async def test_ensure_refuses_to_replace_another_url(
    api: tuple[FakeApi, WebhookRegistry],
) -> None:
    fake, registry = api
    fake.hook = {"url": "https://crm.example.com/pinecall", "secret": "theirs"}
    with pytest.raises(WebhookTakenError, match=r"crm\.example\.com.*REPLACE_WEBHOOK"):
        await registry.ensure(OURS, "s")
    assert fake.hook == {"url": "https://crm.example.com/pinecall", "secret": "theirs"}
    assert fake.puts == 0


async def test_ensure_takes_another_url_over_when_told(
    api: tuple[FakeApi, WebhookRegistry],
) -> None:
    fake, registry = api
    fake.hook = {"url": "https://crm.example.com/pinecall", "secret": None}
    done = await registry.ensure(OURS, "s", replace=True)
    assert done.previous == OrgWebhook("https://crm.example.com/pinecall", signed=False)
    assert done.took_over
    assert fake.hook == {"url": OURS, "secret": "s"}


async def test_an_empty_secret_asks_for_unsigned_posts(
    api: tuple[FakeApi, WebhookRegistry],
) -> None:
    fake, registry = api
    await registry.ensure(OURS, "")
    assert fake.hook == {"url": OURS, "secret": None}
    assert await registry.current() == OrgWebhook(OURS, signed=False)


async def test_show_delete_and_test(api: tuple[FakeApi, WebhookRegistry]) -> None:
    fake, registry = api
    assert await registry.current() is None
    await registry.put(OURS, "s")
    assert await registry.current() == OrgWebhook(OURS, signed=True)
    assert await registry.test() == {"sent": False, "error": "ConnectError: refused"}
    assert await registry.delete()
    assert fake.hook is None
    assert not await registry.delete()  # the platform's 404: nothing was set


async def test_bad_key_is_a_clear_error(api: tuple[FakeApi, WebhookRegistry]) -> None:
    fake, _ = api
    wrong = fake.settings.model_copy(update={"api_key": SecretStr("wrong")})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RegistrationError, match="GET /v1/webhook: HTTP 401"):
            await WebhookRegistry(session, wrong).ensure(OURS, "s")
        with pytest.raises(RegistrationError, match="DELETE /v1/webhook: HTTP 401"):
            await WebhookRegistry(session, wrong).delete()


@pytest.mark.parametrize("filler", [0, 240])  # 240: the secret straddles the 300 bytes kept
# Characters a JSON echo escapes: the secret then is not in the answer as it was put.
@pytest.mark.parametrize("chars", ["x", '"\\', "é/"])
async def test_a_refused_put_never_repeats_the_secret(
    api: tuple[FakeApi, WebhookRegistry], filler: int, chars: str
) -> None:
    # The error is logged at every retry: an answer echoing the PUT's body must not put the
    # webhook secret in the log.
    fake, registry = api
    fake.refuse_put_echoing = True
    secret = "whsec-" + chars + "x" * filler + "-0123456789abcdef0123456789abcdef"
    with pytest.raises(RegistrationError, match="PUT /v1/webhook: HTTP 422") as raised:
        await registry.ensure(OURS, secret)
    said = str(raised.value)
    assert secret[:12] not in said
    assert secret[-12:] not in said


async def test_a_refusal_echoing_the_api_key_never_repeats_it(
    api: tuple[FakeApi, WebhookRegistry],
) -> None:
    # Logged at every retry, as a call-log page's error: a 401 echoing the request's
    # Authorization header must not put the API key in the log.
    fake, _ = api
    fake.echo_refused_key = True
    key = "pc_live/k3y+é"
    wrong = fake.settings.model_copy(update={"api_key": SecretStr(key)})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RegistrationError, match="GET /v1/webhook: HTTP 401") as raised:
            await WebhookRegistry(session, wrong).ensure(OURS, "s")
    said = str(raised.value)
    assert "k3y" not in said, said
    assert "Bearer [secret]" in said, said


async def test_an_answer_over_the_size_cap_is_a_clear_error(
    api: tuple[FakeApi, WebhookRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, registry = api
    fake.hook = {"url": OURS, "secret": "s"}
    monkeypatch.setattr(registration, "MAX_ANSWER_BYTES", 10)
    with pytest.raises(RegistrationError, match="GET /v1/webhook: BodyTooLargeError"):
        await registry.current()


async def test_unreachable_api_is_a_clear_error() -> None:
    settings = PinecallSettings(api_url=f"http://{refusing_address()}", api_key="k")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RegistrationError, match="GET /v1/webhook: ClientConnectorError"):
            await WebhookRegistry(session, settings).current()


@pytest.mark.parametrize(
    ("current", "replace", "step"),
    [
        (None, False, "set"),
        (OrgWebhook(OURS, signed=True), False, "set"),
        (OrgWebhook(OURS, signed=False), False, "set"),
        (OrgWebhook("https://other/x", signed=True), False, "refuse"),
        (OrgWebhook("https://other/x", signed=True), True, "take-over"),
    ],
)
def test_next_step(current: OrgWebhook | None, replace: bool, step: str) -> None:
    assert next_step(current, OURS, replace=replace) == step


def test_parse_webhook() -> None:
    assert parse_webhook(None) is None
    assert parse_webhook({"url": OURS, "signed": True}) == OrgWebhook(OURS, signed=True)
    bad: object
    for bad in ([], {"signed": True}, {"url": 5}, "x"):
        with pytest.raises(RegistrationError, match="not \\{url, signed\\}"):
            parse_webhook(bad)


def test_an_unexpected_webhook_answer_is_described_without_its_values() -> None:
    # An answer of another shape may echo what was put, the secret with it: it is logged.
    with pytest.raises(RegistrationError) as raised:
        parse_webhook({"webhook": {"url": OURS, "secret": "s3cret-value"}})
    assert "s3cret-value" not in str(raised.value)
    assert "'webhook': dict" in str(raised.value)
