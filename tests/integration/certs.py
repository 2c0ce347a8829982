"""Throwaway TLS material for a local broker and its clients, made with the `openssl` CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# One file for `req` (which needs [req] with a distinguished_name; -subj fills it in) and for
# the extensions per kind of certificate: Java and Python both check key usage and SANs.
_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
DAYS = "2"


@dataclass(frozen=True)
class Certs:
    """Paths of the PEM files; the broker reads `dir`/ca.pem and `dir`/server.pem."""

    dir: Path
    ca: Path
    server: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    client_key_password: str
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _key(path: Path) -> None:
    # P-256 keys are generated in milliseconds; genpkey writes PKCS#8, which Kafka's PEM store
    # requires (it refuses the traditional "BEGIN EC PRIVATE KEY" form).
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path,
             cwd=path.parent)  # fmt: skip


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _key(key)
    _openssl(
        "req", "-x509", "-new", "-key", key, "-out", cert, "-days", DAYS,
        "-config", directory / "openssl.cnf", "-extensions", "ca",
        "-subj", f"/CN=pinecall-bridge test {name}",
        cwd=directory,
    )  # fmt: skip
    return key, cert


def _leaf(
    directory: Path, name: str, kind: str, ca: tuple[Path, Path], serial: int
) -> tuple[Path, Path]:
    key, cert, csr = directory / f"{name}.key", directory / f"{name}.crt", directory / f"{name}.csr"
    _key(key)
    _openssl("req", "-new", "-key", key, "-out", csr, "-config", directory / "openssl.cnf",
             "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-set_serial", str(serial),
        "-days", DAYS, "-extfile", directory / "openssl.cnf", "-extensions", kind, "-out", cert,
        cwd=directory,
    )  # fmt: skip
    return key, cert


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, client certificates, a foreign CA."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "openssl.cnf").write_text(_CONFIG)
    ca = _ca(directory, "ca")
    server_key, server_cert = _leaf(directory, "localhost", "server", ca, 1)
    # Kafka's PEM keystore: the private key, then the chain from the leaf up.
    (directory / "server.pem").write_text(
        server_key.read_text() + server_cert.read_text() + ca[1].read_text()
    )
    client_key, client_cert = _leaf(directory, "bridge", "client", ca, 2)
    password = "client-key-secret"
    encrypted = directory / "bridge-encrypted.key"
    _openssl("pkcs8", "-topk8", "-in", client_key, "-out", encrypted, "-v2", "aes-256-cbc",
             "-passout", f"pass:{password}", cwd=directory)  # fmt: skip
    # Signed by a CA the broker does not trust, and trusted by no one: for the refusals.
    other_ca = _ca(directory, "other-ca")
    other_key, other_cert = _leaf(directory, "intruder", "client", other_ca, 3)
    return Certs(
        dir=directory,
        ca=ca[1],
        server=directory / "server.pem",
        client_cert=client_cert,
        client_key=client_key,
        client_key_encrypted=encrypted,
        client_key_password=password,
        other_ca=other_ca[1],
        other_client_cert=other_cert,
        other_client_key=other_key,
    )
