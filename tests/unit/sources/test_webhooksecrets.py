import logging
from pathlib import Path

import pytest

from bridge.config import WebhookSettings
from bridge.metrics import Metrics
from bridge.sources.webhooksecrets import Changes, Read, WebhookSecretsWatch, decide
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
    decision = decide(current, Read(f"{OLD},{NEW}\n"))
    assert decision.result == "reloaded"
    assert values(decision.webhook) == [OLD, NEW]
    assert decision.webhook is not None
    assert decision.webhook.max_age_seconds == 30


def test_the_same_secrets_are_no_reload() -> None:
    # The first poll reads what the start read; a newline or a space after a comma changes nothing.
    assert decide(webhook(f"{OLD},{NEW}"), Read(f"{OLD}, {NEW}\n")).result is None


def test_an_empty_file_is_refused_by_the_rule_at_load_naming_no_value() -> None:
    decision = decide(webhook(OLD), Read("\n"))
    assert decision.result == "invalid"
    assert decision.webhook is None
    (problem,) = decision.problems
    assert problem.startswith("BRIDGE_WEBHOOK__SECRETS is not set")


def test_a_reload_never_turns_signature_checks_off() -> None:
    # Valid at start (unsigned on purpose), but a file emptied while running is a mistake.
    decision = decide(webhook(OLD, allow_unsigned=True), Read(""))
    assert decision.result == "invalid"
    (problem,) = decision.problems
    assert "does not turn signature checks off" in problem


def test_an_unreadable_file_keeps_the_secrets() -> None:
    decision = decide(webhook(OLD), Read(None, ("the secret file x could not be read",)))
    assert decision.result == "unreadable"
    assert decision.problems == ["the secret file x could not be read"]


def test_only_a_change_is_passed_on() -> None:
    changes = Changes()
    assert changes.new(Read(OLD))
    assert not changes.new(Read(OLD))
    assert changes.new(Read(None, ("gone",)))
    assert not changes.new(Read(None, ("gone",)))
    assert changes.new(Read(OLD))


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
    caplog.set_level(logging.INFO, logger="bridge.sources.webhooksecrets")
    kubelet_write(tmp_path, {"BRIDGE_WEBHOOK__SECRETS": OLD + "\n"})
    handler, metrics = Handler(webhook(OLD)), Metrics()
    watch = WebhookSecretsWatch(
        tmp_path / "BRIDGE_WEBHOOK__SECRETS",
        lambda: handler.settings,
        handler.use,
        metrics,
        every=1,
    )
    decision = watch.check()  # the first poll: what the start read
    assert decision is not None
    assert decision.result is None
    assert watch.check() is None

    kubelet_write(tmp_path, {"BRIDGE_WEBHOOK__SECRETS": f"{OLD},{NEW}\n"})
    watch.check()
    assert values(handler.settings) == [OLD, NEW]
    assert reloads(metrics, "reloaded") == 1
    assert "webhook secrets reloaded (2 secrets)" in caplog.messages

    kubelet_write(tmp_path, {"BRIDGE_WEBHOOK__SECRETS": "\n"})
    watch.check()
    watch.check()  # the same bad file: counted and logged once
    assert values(handler.settings) == [OLD, NEW]
    assert reloads(metrics, "invalid") == 1
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "BRIDGE_WEBHOOK__SECRETS is not set" in error

    kubelet_write(tmp_path, {"BRIDGE_WEBHOOK__SECRETS": NEW + "\n"})
    watch.check()
    assert values(handler.settings) == [NEW]
    assert reloads(metrics, "reloaded") == 2
    assert not any(OLD in m or NEW in m for m in caplog.messages)


def test_a_removed_file_keeps_the_secrets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "BRIDGE_WEBHOOK__SECRETS"
    path.write_text(OLD)
    handler, metrics = Handler(webhook(OLD)), Metrics()
    watch = WebhookSecretsWatch(path, lambda: handler.settings, handler.use, metrics, every=1)
    watch.check()
    path.unlink()
    watch.check()
    assert values(handler.settings) == [OLD]
    assert reloads(metrics, "unreadable") == 1
    assert any("could not be read" in m for m in caplog.messages)
