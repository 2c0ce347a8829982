import pytest

from bridge.simulator.hooks import (
    ORG_HOOK_ID,
    HookStore,
    InvalidHookError,
    parse_hook,
    parse_org_hook,
)


def test_parse_a_create_request() -> None:
    assert parse_hook({"url": "http://h/x", "secret": "s"}) == ("http://h/x", ("*",), "s")
    assert parse_hook({"url": "https://h", "events": ["call.*"]}) == (
        "https://h",
        ("call.*",),
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"secret": "s"},
        {"url": "ftp://h"},
        {"url": "http://h", "events": "call.started"},
        {"url": "http://h", "secret": ""},
        {"url": "http://h", "secret": 5},
    ],
)
def test_bad_create_requests(body: object) -> None:
    with pytest.raises(InvalidHookError):
        parse_hook(body)


def test_create_list_delete_match() -> None:
    store = HookStore()
    calls = store.create("http://a", ("call.*",), "s")
    every = store.create("http://b", ("*",), None)
    assert calls.id != every.id
    assert calls.id.startswith("wh_")
    assert store.all() == [calls, every]
    assert store.matching("call.ended") == [calls, every]
    assert store.matching("message.sent") == [every]
    assert store.delete(calls.id)
    assert not store.delete(calls.id)
    assert store.all() == [every]


def test_parse_a_put_request() -> None:
    assert parse_org_hook({"url": "https://h/x", "secret": "s"}) == ("https://h/x", "s")
    # The platform keeps `secret or None`: no secret, or an empty one, means unsigned posts.
    assert parse_org_hook({"url": "http://h"}) == ("http://h", None)
    assert parse_org_hook({"url": "http://h", "secret": ""}) == ("http://h", None)


@pytest.mark.parametrize(
    "body", [[], {"secret": "s"}, {"url": "ftp://h"}, {"url": "http://h", "secret": 5}]
)
def test_bad_put_requests(body: object) -> None:
    with pytest.raises(InvalidHookError):
        parse_org_hook(body)


def test_the_organisations_webhook_is_one_and_hears_every_type() -> None:
    store = HookStore()
    assert store.org() is None
    extra = store.create("http://a", ("call.*",), None)
    first = store.put_org("http://b", "s")
    second = store.put_org("http://c", None)
    assert store.org() == second
    assert first.id == second.id == ORG_HOOK_ID
    assert store.all() == [extra, second]
    assert store.matching("monitor.fired") == [second]
    assert second.shown() == {"url": "http://c", "signed": False}
    assert first.shown() == {"url": "http://b", "signed": True}
