"""The commit-answer proxy's reading of Kafka frames (tests/integration/kafkaproxy.py)."""

from __future__ import annotations

import struct

import pytest
from aiokafka.protocol.api import RequestHeader_v1, RequestStruct
from aiokafka.protocol.transaction import EndTxnRequest_v0, TxnOffsetCommitRequest_v0

from tests.integration.kafkaproxy import (
    EndTxn,
    correlation_of,
    end_txn_error,
    parse_end_txn,
)


def frame(request: RequestStruct, correlation_id: int, client_id: str | None = "aiokafka") -> bytes:
    """A request as aiokafka writes it to the socket, without the size prefix."""
    header = RequestHeader_v1(request, correlation_id, client_id)
    encoded: bytes = header.encode() + request.encode()
    return encoded


@pytest.mark.parametrize("commit", [True, False])
@pytest.mark.parametrize("client_id", ["aiokafka-0.14", None])
def test_an_end_txn_request_is_read_whole(commit: bool, client_id: str | None) -> None:
    request = EndTxnRequest_v0("g-dedup-one", 4001, 7, commit)
    assert parse_end_txn(frame(request, 42, client_id)) == EndTxn(
        42, "g-dedup-one", 4001, 7, commit
    )


def test_other_requests_are_not_end_txn() -> None:
    request = TxnOffsetCommitRequest_v0("g-dedup-one", "g", 4001, 7, [])
    assert parse_end_txn(frame(request, 1)) is None


def test_a_flexible_end_txn_is_recognised_without_its_body() -> None:
    header = struct.pack(">hhih", 26, 4, 9, -1)
    assert parse_end_txn(header + b"\x00whatever") == EndTxn(9, None, None, None, None)


def test_a_response_is_told_by_its_correlation_id_and_carries_its_error_code() -> None:
    answer = struct.pack(">iih", 42, 0, 51)  # correlation_id, throttle_time_ms, error_code
    assert correlation_of(answer) == 42
    assert end_txn_error(answer) == 51
