import logging
from pathlib import Path
from typing import Any

import pytest

from bridge.config import PinecallSettings, WebhookSettings
from bridge.metrics import Metrics
from bridge.sources.secretwatch import (
    API_KEY,
    WEBHOOK,
    Changes,
    Decision,
    Read,
    SecretWatch,
    decide,
)
from tests.metrics import sample
from tests.secretvolume import kubelet_write

OLD = "old-secret-0123456789"
NEW = "new-secret-0123456789"


def webhook(secrets: str, **fields: object) -> WebhookSettings:
    return WebhookSettings.model_validate({"secrets": secrets, **fields})


def values(settings: WebhookSettings | None) -> list[str]:
    assert settings is not None
    return [s.get_secret_value() for s in settings.secrets]


def test_new_secrets_are_swapped_in_with_the_other_settings_kept() -> None:
    current = webhook(OLD, max_age_seconds=30)
    decision = decide(WEBHOOK, current, Read(f"{OLD},{NEW}\n"))
    assert decision.result == "reloaded"
    assert values(decision.fresh) == [OLD, NEW]
    assert decision.fresh is not None
    assert decision.fresh.max_age_seconds == 30


def test_the_same_secrets_are_no_reload() -> None:
    # The first poll reads what the start read; a newline or a space after a comma changes nothing.
    assert decide(WEBHOOK, webhook(f"{OLD},{NEW}"), Read(f"{OLD}, {NEW}\n")).result is None


def test_an_empty_file_is_refused_by_the_rule_at_load_naming_no_value() -> None:
    decision = decide(WEBHOOK, webhook(OLD), Read("\n"))
    assert decision.result == "invalid"
    assert decision.fresh is None
    (problem,) = decision.problems
    assert problem.startswith("BRIDGE_WEBHOOK__SECRETS is not set")


def test_secrets_one_a_line_are_refused_not_taken_as_one_secret_matching_none() -> None:
    # The old and the new secret a line each (a rotation's list written as a file): taken as one
    # secret holding a line break, it verified neither sender's signature, every webhook a 401.
    decision = decide(WEBHOOK, webhook(OLD), Read(f"{OLD}\n{NEW}\n"))
    assert decision.result == "invalid"
    (problem,) = decision.problems
    assert problem.startswith("BRIDGE_WEBHOOK__SECRETS: ")
    assert "comma-separated" in problem
    assert OLD not in problem
    assert NEW not in problem


def test_a_reload_never_turns_signature_checks_off() -> None:
    # Valid at start (unsigned on purpose), but a file emptied while running is a mistake.
    decision = decide(WEBHOOK, webhook(OLD, allow_unsigned=True), Read(""))
    assert decision.result == "invalid"
    (problem,) = decision.problems
    assert "does not turn signature checks off" in problem


def test_an_unreadable_file_keeps_the_secrets() -> None:
    decision = decide(WEBHOOK, webhook(OLD), Read(None, ("the secret file x could not be read",)))
    assert decision.result == "unreadable"
    assert decision.problems == ["the secret file x could not be read"]


def test_only_a_settled_change_is_passed_on() -> None:
    changes = Changes()
    assert not changes.new(Read(OLD))  # one read: maybe caught mid-write
    assert changes.new(Read(OLD))  # two polls in a row agree
    assert not changes.new(Read(OLD))  # no change
    assert not changes.new(Read(None, ("gone",)))
    assert changes.new(Read(None, ("gone",)))
    assert not changes.new(Read(None, ("gone",)))
    assert not changes.new(Read(OLD[:5]))  # half-written: never passed on
    assert not changes.new(Read(OLD))
    assert changes.new(Read(OLD))


def test_a_flapping_file_is_never_passed_on() -> None:
    changes = Changes()
    assert not any(changes.new(Read(text)) for text in [OLD, NEW] * 3)


def settle(watch: SecretWatch[Any]) -> Decision[Any] | None:
    """Two polls of an unchanged file: the first sees it, the second takes it as settled."""
    assert watch.check() is None
    return watch.check()


class Handler:
    """What the watch drives: the webhook handler's current settings and its swap."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings

    def use(self, settings: WebhookSettings) -> None:
        self.settings = settings


def reloads(metrics: Metrics, result: str) -> float:
    return sample(metrics, "pinecall_bridge_secret_reloads_total", secret="webhook", result=result)


def test_a_kubelet_swap_is_reloaded_and_a_bad_value_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sources.secretwatch")
    kubelet_write(tmp_path, {"BRIDGE_WEBHOOK__SECRETS": OLD + "\n"})
    handler, metrics = Handler(webhook(OLD)), Metrics()
    watch = SecretWatch(
        WEBHOOK,
        tmp_path / "BRIDGE_WEBHOOK__SECRETS",
        lambda: handler.settings,
        handler.use,
        metrics,
    )
    decision = settle(watch)  # the first polls: what the start read
    assert decision is not None
    assert decision.result is None
    assert watch.check() is None

    kubelet_write(tmp_path, {"BRIDGE_WEBHOOK__SECRETS": f"{OLD},{NEW}\n"})
    settle(watch)
    assert values(handler.settings) == [OLD, NEW]
    assert reloads(metrics, "reloaded") == 1
    assert "webhook secrets reloaded (2 secrets)" in caplog.messages

    kubelet_write(tmp_path, {"BRIDGE_WEBHOOK__SECRETS": "\n"})
    settle(watch)
    watch.check()  # the same bad file: counted and logged once
    assert values(handler.settings) == [OLD, NEW]
    assert reloads(metrics, "invalid") == 1
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "BRIDGE_WEBHOOK__SECRETS is not set" in error

    kubelet_write(tmp_path, {"BRIDGE_WEBHOOK__SECRETS": NEW + "\n"})
    settle(watch)
    assert values(handler.settings) == [NEW]
    assert reloads(metrics, "reloaded") == 2
    assert not any(OLD in m or NEW in m for m in caplog.messages)


def test_a_removed_file_keeps_the_secrets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "BRIDGE_WEBHOOK__SECRETS"
    path.write_text(OLD)
    handler, metrics = Handler(webhook(OLD)), Metrics()
    watch = SecretWatch(WEBHOOK, path, lambda: handler.settings, handler.use, metrics)
    settle(watch)
    path.unlink()
    settle(watch)
    assert values(handler.settings) == [OLD]
    assert reloads(metrics, "unreadable") == 1
    assert any("could not be read" in m for m in caplog.messages)


def test_a_file_rewritten_in_place_is_not_taken_half_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "BRIDGE_WEBHOOK__SECRETS"
    path.write_text(OLD + "\n")
    handler, metrics = Handler(webhook(OLD)), Metrics()
    watch = SecretWatch(WEBHOOK, path, lambda: handler.settings, handler.use, metrics)
    settle(watch)
    # Truncate and write, as `echo new > file` does, the poll landing between two writes.
    with path.open("w") as file:
        file.write(NEW[:10])
        file.flush()
        assert watch.check() is None
        assert values(handler.settings) == [OLD]
        file.write(NEW[10:] + "\n")
    assert watch.check() is None  # whole now, but read once only
    assert values(handler.settings) == [OLD]
    decision = watch.check()
    assert decision is not None
    assert decision.result == "reloaded"
    assert values(handler.settings) == [NEW]
    assert reloads(metrics, "reloaded") == 1
    assert reloads(metrics, "invalid") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


OLD_KEY = "pk_old_0123456789"
NEW_KEY = "pk_new_0123456789"


def api(key: str, **fields: object) -> PinecallSettings:
    return PinecallSettings.model_validate({"api_key": key, **fields})


def key(settings: PinecallSettings | None) -> str | None:
    assert settings is not None
    return settings.api_key.get_secret_value() if settings.api_key else None


def test_a_new_api_key_is_swapped_in_with_the_other_settings_kept() -> None:
    current = api(OLD_KEY, api_url="http://127.0.0.1:8080", env="staging")
    decision = decide(API_KEY, current, Read(NEW_KEY + "\n"))
    assert decision.result == "reloaded"
    assert key(decision.fresh) == NEW_KEY
    assert decision.fresh is not None
    assert (decision.fresh.api_url, decision.fresh.env) == ("http://127.0.0.1:8080", "staging")


def test_the_same_api_key_with_a_line_end_is_no_reload() -> None:
    assert decide(API_KEY, api(OLD_KEY), Read(f"{OLD_KEY}\n")).result is None


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("\n", "holds no key"),  # a reload never takes the key away
        (f"{OLD_KEY}\n{NEW_KEY}\n", "must not contain whitespace"),  # two keys, one per line
    ],
)
def test_an_api_key_refused_by_the_checks_at_load_keeps_the_old_naming_no_value(
    text: str, rule: str
) -> None:
    decision = decide(API_KEY, api(OLD_KEY), Read(text))
    assert decision.result == "invalid"
    assert decision.fresh is None
    (problem,) = decision.problems
    assert problem.startswith("BRIDGE_PINECALL__API_KEY")
    assert rule in problem
    assert OLD_KEY not in problem
    assert NEW_KEY not in problem


def test_an_emptied_key_file_of_a_registering_bridge_is_refused() -> None:
    current = api(OLD_KEY, register_webhook=True, public_url="https://bridge.example.com")
    decision = decide(API_KEY, current, Read(""))
    assert decision.result == "invalid"
    assert decision.problems


def api_reloads(metrics: Metrics, result: str) -> float:
    return sample(
        metrics, "pinecall_bridge_secret_reloads_total", secret="pinecall_api_key", result=result
    )


def test_the_api_key_file_is_followed_through_a_kubelet_swap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sources.secretwatch")
    name = "BRIDGE_PINECALL__API_KEY"
    kubelet_write(tmp_path, {name: OLD_KEY + "\n"})
    settings, metrics = api(OLD_KEY), Metrics()
    used: list[PinecallSettings] = []
    watch = SecretWatch(API_KEY, tmp_path / name, lambda: settings, used.append, metrics)
    assert api_reloads(metrics, "reloaded") == 0  # the series exist from the start
    first = settle(watch)
    assert first is not None
    assert first.result is None
    assert used == []

    kubelet_write(tmp_path, {name: "two words\n"})
    settle(watch)
    assert used == []
    assert api_reloads(metrics, "invalid") == 1

    kubelet_write(tmp_path, {name: NEW_KEY + "\n"})
    settle(watch)
    assert [key(s) for s in used] == [NEW_KEY]
    assert api_reloads(metrics, "reloaded") == 1
    assert any(m.startswith("Pinecall API key reloaded") for m in caplog.messages)
    assert not any(OLD_KEY in m or NEW_KEY in m or "two words" in m for m in caplog.messages)
