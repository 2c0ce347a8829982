import pytest

from bridge.simulator.hooks import HookStore, InvalidHookError, parse_hook


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


def test_the_public_view_never_shows_the_secret() -> None:
    hook = HookStore().create("http://a", ("*",), "hush")
    assert hook.public() == {
        "id": hook.id,
        "url": "http://a",
        "events": ["*"],
        "created_at": hook.created_at,
    }
    assert hook.created_at.endswith("Z")
