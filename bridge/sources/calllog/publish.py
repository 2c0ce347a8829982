"""Entries into the one publish path, retried until Kafka has all of them or the source stops."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline

log = logging.getLogger(__name__)
# One publisher per call followed: a Kafka outage made each of them say each retry (81 lines in
# a 5 s outage of the chaos `calllog` scenario); the pipeline counts and logs the failures too.
flood = LogThrottle(log)
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Publisher:
    """`publish()` returns True once Kafka acknowledged the whole batch; False when stopping."""

    def __init__(self, pipeline: Pipeline, metrics: Metrics, stopping: asyncio.Event) -> None:
        self._pipeline = pipeline
        self._metrics = metrics
        self._stopping = stopping

    async def publish(self, items: Sequence[Any], times: Sequence[float] = ()) -> bool:
        """Submit on channel `sse`; a retry sends the whole batch again (the dedup drops copies).

        `times` are the entries' own timestamps, for how far behind live they were published.
        """
        attempt = 0
        batch = list(items)
        # Each retry is the same delivery, received now: made here, not by the first submit, so
        # that a submit a bug cut off mid-batch does not leave its retry counting it received.
        delivery = self._pipeline.delivery()
        while True:
            try:
                result = await self._pipeline.submit(batch, "sse", retry=delivery)
            except Exception:  # a bug must not drop entries silently: retry, then re-read
                log.exception("call log batch failed unexpectedly; retrying it")
                failed = len(batch)
            else:
                if result.ok:
                    now = time.time()
                    for ts in times:
                        self._metrics.sse_behind_live.observe(max(now - ts, 0.0))
                    return True
                failed = result.failed
            if self._stopping.is_set():
                return False
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            attempt += 1
            flood.warning(
                "call log entries not acknowledged by Kafka; retrying",
                extra={"events": failed, "attempt": attempt, "retry_in_s": delay},
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                return False
            except TimeoutError:
                pass
