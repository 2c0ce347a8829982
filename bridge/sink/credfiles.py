"""Kafka's credential files as read at start, and whether they changed since.

The Kafka clients hold the SASL password and the TLS files read at start; a rotated one takes a
restart, which the bridge asks for (/healthz) only once Kafka stops answering, or refuses a client
connecting again (a dedup stage's rebalance) its credentials (README).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from bridge.config import KafkaSettings, kafka_credential
from bridge.secretfiles import secret_text

log = logging.getLogger(__name__)

SASL_PASSWORD = "BRIDGE_KAFKA__SASL_PASSWORD"
KEY_PASSWORD = "BRIDGE_KAFKA__SSL_KEY_PASSWORD"
PASSWORDS = (SASL_PASSWORD, KEY_PASSWORD)
_TLS_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


def credential_files(kafka: KafkaSettings, secret_files: Mapping[str, Path]) -> dict[str, Path]:
    """The files the Kafka clients' credentials came from, by variable: the passwords' secret
    files (BRIDGE_SECRETS_DIR) and, with TLS, the certificate, key and CA files."""
    files = {name: path for name in PASSWORDS if (path := secret_files.get(name)) is not None}
    if kafka.security_protocol in {"SSL", "SASL_SSL"}:
        for field in _TLS_FILES:
            path = getattr(kafka, field)
            if path is not None:
                files[f"BRIDGE_KAFKA__{field.upper()}"] = Path(path)
    return files


# A PEM block: its type and base64 body, whatever the line breaks.
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def _digest(name: str, path: Path) -> bytes | None:
    """The file's content hashed (never kept in clear), or None when it cannot be read now.

    A password by the value its setting holds; PEM files by their blocks as a set: a file
    written again with a line end added, or a CA bundle with the same certificates in another
    order (or wrapped otherwise), holds the same credential, so no change."""
    try:
        # Read once: a second read for a password's value could find the file back from a
        # moment's absence (a kubelet swap) and compare its bytes with the value read at start.
        content = path.read_bytes()
    except OSError:
        return None
    if name in PASSWORDS:
        try:
            # Decoded and stripped as at start (BOM, line end): a restart would offer the same one.
            value = kafka_credential(secret_text(content))
        except UnicodeDecodeError:
            pass  # not UTF-8 (a start would refuse it): by its bytes
        else:
            return hashlib.sha256((value or "").encode()).digest()
    blocks = sorted(kind + b":" + b"".join(body.split()) for kind, body in _PEM.findall(content))
    return hashlib.sha256(b"\n".join(blocks) if blocks else content).digest()


def restart_needed(
    changed: Sequence[str], *, kafka_answering: bool, refused_authentication: bool
) -> bool:
    """Whether only a restart can help, from the facts: a credential file `changed` since start,
    and Kafka unanswered or refusing a connection set-up the old credentials. Pure."""
    return bool(changed) and (not kafka_answering or refused_authentication)


class CredentialFiles:
    """Kafka's credential files, each compared at `changed` with what it held at start."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._files = dict(files)
        self._start = {name: _digest(name, path) for name, path in self._files.items()}
        self._said = False

    def changed(self) -> list[str]:
        """The variables whose file holds something else than at start (one unreadable now, as
        mid-swap, counts as unchanged)."""
        names = []
        for name, path in self._files.items():
            now = _digest(name, path)
            if now is not None and now != self._start[name]:
                names.append(name)
        return names

    def restart_needed(self, kafka_connected: bool, *, refused: bool = False) -> bool:
        """Whether only a restart can help (`restart_needed`): a credential file changed since
        start (the clients still offer the old one, likely revoked), and Kafka unanswered or
        `refused` a client's last connection for its credentials. Said once, at ERROR."""
        if (kafka_connected and not refused) or not self._files:
            return False
        changed = self.changed()
        if not restart_needed(
            changed, kafka_answering=kafka_connected, refused_authentication=refused
        ):
            return False
        if not self._said:
            self._said = True
            log.error(
                "Kafka does not answer, or refuses a client its credentials, and they changed"
                " since start: the Kafka clients keep the ones read at start, so /healthz fails"
                " for a restart to read the new ones",
                extra={"settings": changed, "refused": refused},
            )
        return True


__all__ = ["PASSWORDS", "CredentialFiles", "credential_files", "restart_needed"]
