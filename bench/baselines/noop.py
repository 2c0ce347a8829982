"""Baseline (b): the real bridge with publishing replaced by a no-op: the Python-side ceiling.

Everything of the ingest stage runs as in `pinecall-bridge run` (settings from the environment,
JSON logs, metrics, signature checks, normalisation, ingest encoding) except that `send` returns
an already-resolved future. There is no Kafka, so no dedup stage and no feed lease: the feed, when
enabled, starts at once. Its delivered count is `events_ingested_total`.

  python -m bench.baselines.noop      # configured with the same BRIDGE_* variables
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import uvloop

from bridge.config import Settings, load_settings
from bridge.logsetup import configure
from bridge.metrics import Metrics
from bridge.service import Bridge
from bridge.sink.kafka import KafkaSink, Record
from bridge.sources.lease import FeedLease


class NoopSink(KafkaSink):
    """Connected from the start; every record is 'acknowledged' at once and goes nowhere."""

    async def start(self) -> None:
        self._set_connected(True)

    async def stop(self) -> None:
        self._set_connected(False)

    async def send(self, record: Record) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def ensure_topics(self, *_: Any) -> set[str]:
        return set()

    async def warm(self, names: list[str]) -> None:
        return None


class NoDedup:
    """The dedup stage's place, empty: nothing reaches an ingest topic to deduplicate."""

    async def start(self) -> None:
        return None

    async def stop(self, drain_by: float | None = None) -> None:
        return None


class HeldLease(FeedLease):
    """The feed lease, always held: one process, no group to ask.

    A FeedLease, so that mypy holds it to the lease's signatures as the service's use of them
    changes (a stand-in apart from it missed `connected` and `stop`'s argument).
    """

    def __init__(self, bridge: Bridge) -> None:  # no consumer, no group: nothing of the parent's
        self._bridge = bridge

    @property
    def alive(self) -> bool:
        return True

    async def start(self) -> None:
        await self._bridge._start_feed()

    def connected(self, at: float) -> None:
        return None

    async def stop(self, read_until: float | None = None, by: float | None = None) -> None:
        return None


async def serve(settings: Settings) -> None:
    bridge = Bridge(settings, Metrics())
    sink = NoopSink(settings.kafka, bridge.metrics)
    bridge.sink = sink
    bridge.pipeline._sink = sink  # the pipeline's one reference to its sink
    bridge.dedup = NoDedup()  # type: ignore[assignment]
    bridge.hanging = None  # no output topics are written: nothing to watch
    if bridge.lease is not None:
        bridge.lease = HeldLease(bridge)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bridge.start()
    await stop.wait()
    await bridge.stop()


def main() -> None:
    settings = load_settings()
    configure(settings.log.level, settings.log.format)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
