"""The commit-answer proxy (tests/integration/kafkaproxy.py): its reading of frames, its stop."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from aiokafka.protocol.api import RequestHeader_v1, RequestStruct
from aiokafka.protocol.transaction import (
    EndTxnRequest_v0,
    InitProducerIdRequest_v0,
    InitProducerIdResponse_v0,
    TxnOffsetCommitRequest_v0,
)

from tests.integration.kafkaproxy import (
    CONCURRENT_TRANSACTIONS,
    CommitAnswerCut,
    EndTxn,
    correlation_of,
    end_txn_error,
    init_producer_id_refusal,
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


def test_an_init_producer_id_is_refused_with_an_answer_aiokafka_reads() -> None:
    request = InitProducerIdRequest_v0("g-dedup-one", 60_000)
    answer = init_producer_id_refusal(frame(request, 17), CONCURRENT_TRANSACTIONS)
    assert answer is not None
    assert correlation_of(answer) == 17
    decoded = InitProducerIdResponse_v0.decode(answer[4:])  # after the correlation id
    assert (decoded.error_code, decoded.producer_id, decoded.producer_epoch) == (51, -1, -1)


def test_other_requests_are_not_refused_as_init_producer_id() -> None:
    request = EndTxnRequest_v0("g-dedup-one", 4001, 7, True)
    assert init_producer_id_refusal(frame(request, 1), CONCURRENT_TRANSACTIONS) is None


async def test_a_stop_with_a_connection_open_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # until the proxy closes it
        writer.close()

    upstream = await asyncio.start_server(silent, "127.0.0.1", 0)
    proxy = CommitAnswerCut()
    proxy.upstream = ("127.0.0.1", upstream.sockets[0].getsockname()[1])
    await proxy.start()
    _, client = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        await asyncio.wait_for(connected.wait(), 5)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            await proxy.stop()
            await asyncio.sleep(0.01)  # the server's callbacks on its connections' tasks
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    finally:
        client.close()
        upstream.close()
        await upstream.wait_closed()
