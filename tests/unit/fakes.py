"""Test doubles for the Kafka sink: records accepted in memory, acks controlled by the test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bridge.sink.kafka import Record
from bridge.sink.limits import TopicLimits


class FakeSink:
    """`auto_ack` acks at once; otherwise the test resolves `futures` itself."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.records: list[Record] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.refuse: Exception | None = None
        self.refuse_if: Callable[[Record], bool] = lambda record: True
        self.block_send = False
        self.reachable: bool | None = None
        self.limits: TopicLimits | None = None  # checked as KafkaSink checks them

    async def send(self, record: Record) -> asyncio.Future[Any]:
        if self.block_send:
            await asyncio.Event().wait()
        if self.refuse is not None and self.refuse_if(record):
            raise self.refuse
        if self.limits is not None:
            self.limits.check(record)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        self.records.append(record)
        if self.auto_ack:
            future.set_result(len(self.records))
        return future

    def mark_unreachable(self) -> None:
        self.reachable = False

    def mark_reachable(self) -> None:
        self.reachable = True

    def acked(self) -> list[Record]:
        return [
            r
            for r, f in zip(self.records, self.futures, strict=True)
            if f.done() and not f.exception()
        ]
