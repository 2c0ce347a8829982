#!/usr/bin/env python3
"""Kafka readiness probe: succeed once a broker answers a Metadata request.

Stdlib only, because it runs before the project's venv exists. An open TCP
port is not enough (the socket is bound well before the node has joined its
KRaft quorum and registered); a Metadata response listing a broker is.

Exit status: 0 ready, 1 not ready. Prints the brokers found (or the reason).
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from typing import Any

API_METADATA = 3
# v8 is the newest non-flexible Metadata version (no tagged fields to encode);
# Kafka 4.x dropped v0-v3 (KIP-896), and 3.x brokers accept v8 too.
METADATA_VERSION = 8
CLIENT_ID = b"pinecall-probe"
MAX_RESPONSE = 16 * 1024 * 1024


class ProbeError(Exception):
    pass


def _request(correlation_id: int) -> bytes:
    header = (
        struct.pack(">hhih", API_METADATA, METADATA_VERSION, correlation_id, len(CLIENT_ID))
        + CLIENT_ID
    )
    # topics: empty array (not null) so the reply carries no topic list at all;
    # then allow_auto_topic_creation, include_cluster_ops, include_topic_ops.
    body = struct.pack(">i???", 0, False, False, False)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError(f"connection closed after {len(buf)}/{n} bytes")
        buf += chunk
    return bytes(buf)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProbeError("truncated Metadata response")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        if len(raw) != length:
            raise ProbeError("truncated Metadata response")
        self.pos += length
        return raw.decode("utf-8", "replace")


def probe(host: str, port: int, timeout: float) -> tuple[str | None, list[tuple[int, str, int]]]:
    correlation_id = int(time.monotonic() * 1000) & 0x7FFFFFFF
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_request(correlation_id))
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 4 <= size <= MAX_RESPONSE:
            raise ProbeError(f"implausible response size {size} (not a Kafka broker?)")
        r = _Reader(_recv_exact(sock, size))
    if r.take(">i") != correlation_id:
        raise ProbeError("correlation id mismatch")
    r.take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(r.take(">i")):
        node_id, host_, port_ = r.take(">i"), r.string(), r.take(">i")
        r.string()  # rack
        brokers.append((node_id, host_ or "", port_))
    cluster_id = r.string()
    if not brokers:
        raise ProbeError("Metadata response lists no broker yet")
    return cluster_id, brokers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "address", nargs="?", default="127.0.0.1:9092", help="host:port (default %(default)s)"
    )
    ap.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="retry until ready or SECONDS elapsed",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="per-attempt socket timeout (default %(default)s)",
    )
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    host, _, port = args.address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    deadline = time.monotonic() + args.wait
    while True:
        try:
            cluster_id, brokers = probe(host, int(port), args.timeout)
        except (OSError, ProbeError, ValueError) as exc:
            if time.monotonic() >= deadline:
                if not args.quiet:
                    print(f"not ready: {host}:{port}: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.25)
            continue
        if not args.quiet:
            listed = ", ".join(f"{n}@{h}:{p}" for n, h, p in brokers)
            print(f"ready: {host}:{port} cluster={cluster_id} brokers=[{listed}]")
        return 0


if __name__ == "__main__":
    sys.exit(main())
