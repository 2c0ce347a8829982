"""Kafka's credential files compared with what they held at start."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.sink.credfiles import (
    PASSWORDS,
    SASL_PASSWORD,
    CredentialFiles,
    credential_files,
    restart_needed,
)
from tests.secretvolume import kubelet_write


def test_the_files_are_the_kafka_password_secrets(tmp_path: Path) -> None:
    secrets = {SASL_PASSWORD: tmp_path / SASL_PASSWORD, "BRIDGE_WEBHOOK__SECRETS": tmp_path / "w"}
    plain = load_settings(
        webhook={"secrets": ["s"]},
        kafka={"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "p"},
    ).kafka
    assert credential_files(plain, secrets) == {SASL_PASSWORD: secrets[SASL_PASSWORD]}


def test_a_rotated_file_with_kafka_unanswered_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = tmp_path / "secrets"
    kubelet_write(volume, {SASL_PASSWORD: "old\n"})
    files = CredentialFiles({SASL_PASSWORD: volume / SASL_PASSWORD})
    assert not files.restart_needed(kafka_connected=False)  # refused, but a restart reads the same
    kubelet_write(volume, {SASL_PASSWORD: "rotated-secret-42\n"})
    assert files.changed() == [SASL_PASSWORD]
    # The clients still connect with the old one: no restart for a rotation alone.
    assert not files.restart_needed(kafka_connected=True)
    with caplog.at_level(logging.ERROR, "bridge.sink.credfiles"):
        assert files.restart_needed(kafka_connected=False)
        assert files.restart_needed(kafka_connected=False)
    [said] = caplog.records  # once, naming the setting and never the value
    assert said.__dict__["settings"] == [SASL_PASSWORD]
    assert "rotated-secret-42" not in said.getMessage() + str(said.__dict__["settings"])


def test_a_restart_is_needed_for_changed_files_kafka_unanswered_or_refusing_them() -> None:
    changed = [SASL_PASSWORD]
    assert restart_needed(changed, kafka_answering=False, refused_authentication=False)
    # The ingest producer's old connection still answers; the dedup stage's new one is refused.
    assert restart_needed(changed, kafka_answering=True, refused_authentication=True)
    assert not restart_needed(changed, kafka_answering=True, refused_authentication=False)
    # Refused, files unchanged: a restart reads the same credentials.
    assert not restart_needed([], kafka_answering=True, refused_authentication=True)


def test_a_rotated_file_refused_to_a_client_while_kafka_answers_needs_a_restart(
    tmp_path: Path,
) -> None:
    volume = tmp_path / "secrets"
    kubelet_write(volume, {SASL_PASSWORD: "old\n"})
    files = CredentialFiles({SASL_PASSWORD: volume / SASL_PASSWORD})
    assert not files.restart_needed(kafka_connected=True, refused=True)
    kubelet_write(volume, {SASL_PASSWORD: "new\n"})
    assert files.restart_needed(kafka_connected=True, refused=True)


@pytest.mark.parametrize("name", PASSWORDS)
def test_a_password_file_written_again_with_only_its_line_end_or_bom_changed_is_no_change(
    tmp_path: Path, name: str
) -> None:
    # The clients hold the password without them: a restart would offer the same one, yet with
    # Kafka down for another reason (or refusing it) /healthz asked every pod to restart.
    volume = tmp_path / "secrets"
    kubelet_write(volume, {name: "same-secret"})
    files = CredentialFiles({name: volume / name})
    for again in ("same-secret\n", "same-secret\r\n", "\ufeffsame-secret\n", "same-secret"):
        kubelet_write(volume, {name: again})
        assert files.changed() == [], repr(again)
        assert not files.restart_needed(kafka_connected=False, refused=True)
    kubelet_write(volume, {name: "same-secret \n"})  # a trailing space is the password's
    assert files.changed() == [name]


def test_a_file_unreadable_for_a_moment_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / SASL_PASSWORD
    path.write_text("old\n")
    files = CredentialFiles({SASL_PASSWORD: path})
    path.unlink()
    assert not files.restart_needed(kafka_connected=False)


def test_a_password_file_missed_for_a_moment_mid_swap_is_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kubelet swapped the volume (another key of the Secret rotated) while it was read: the
    # first open finds the old version removed, the next the new one. Read again by its bytes,
    # the file its `echo` made ("...\n") differed from the password read at start.
    volume = tmp_path / "secrets"
    kubelet_write(volume, {SASL_PASSWORD: "same-secret\n"})
    path = volume / SASL_PASSWORD
    files = CredentialFiles({SASL_PASSWORD: path})
    kubelet_write(volume, {SASL_PASSWORD: "same-secret\n"})
    opened, missed = Path.open, list[Path]()

    def open_mid_swap(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path and not missed:
            missed.append(self)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_mid_swap)
    assert files.changed() == []
    assert missed == [path]
    assert not files.restart_needed(kafka_connected=False)


def pem(kind: str, body: str) -> str:
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


def test_a_ca_bundle_written_again_with_its_certificates_reordered_is_no_change(
    tmp_path: Path,
) -> None:
    # The same credential: with Kafka down for another reason, it restarted every pod at once.
    path = tmp_path / "ca.pem"
    one, two = pem("CERTIFICATE", "QUJD\nREVG"), pem("CERTIFICATE", "R0hJ")
    path.write_text(one + two)
    files = CredentialFiles({"BRIDGE_KAFKA__SSL_CAFILE": path})
    path.write_text("# re-issued\n" + two + one.replace("QUJD\nREVG", "QUJDREVG"))
    assert files.changed() == []
    path.write_text(two + pem("CERTIFICATE", "SktM"))  # a certificate replaced: changed
    assert files.changed() == ["BRIDGE_KAFKA__SSL_CAFILE"]
