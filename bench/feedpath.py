"""CPU per frame of the WebSocket feed's path, in-process: two variants paired in ABBA rounds.

    python -m bench.feedpath [--variant parsed|gauge|all|control] [--rounds 40] [--per-round 2000]
                             [--burst 50] [--profile] [--gc-threshold 700]

What runs: text frames (`bench.events` entries as `str`, as websockets hands them over) given to
`WebSocketSource._take` a burst at a time (websockets answers `recv` without suspending while
frames are buffered: a burst is read before the publisher runs), and the source's own publisher
task taking them from the backlog in micro-batches through the real pipeline and
`KafkaSink.send`, the producer's `send` answering a done future (no Kafka I/O); uvloop when
installed. Not timed: websockets' own parsing of the frames. A round ends when every frame is
acknowledged. The rounds, the ABBA order and the control are `bench.paired`'s. `--profile` prints
a cProfile (CPU time) of the new variant instead, by own time.
To measure a change, copy its old function here and add a variant to VARIANTS. The collector's
`gc-threshold` and `gc-freeze` variants are `bench.handlerpath`'s (its docstring says how).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import orjson

from bench.events import entry
from bench.handlerpath import _Producer
from bench.paired import (
    CPYTHON_GEN0_THRESHOLD,
    gc_threshold,
    gc_unfrozen,
    paired,
    patched,
    report,
    run,
    set_gen0_threshold,
)
from bridge.config import load_tool_settings
from bridge.metrics import Metrics
from bridge.pipeline import pipeline_for
from bridge.routing import Router
from bridge.sink import kafka
from bridge.sources import websocket
from bridge.sources.frames import classify
from bridge.sources.textsize import utf8_size
from bridge.sources.websocket import WebSocketSource, _Opened

# --- The old functions, as they were before each change -----------------------------------------


def _old_take(self: WebSocketSource, opened: _Opened, message: str | bytes) -> None:
    """A copy, on purpose (the A/B's old side), of bridge/sources/websocket.py's
    `WebSocketSource._take` before a frame meeting a small backlog was held parsed: the
    publisher parsed every frame's text again."""
    limit = self._settings.max_frame_bytes
    if isinstance(message, str) and len(message) * 4 > limit and utf8_size(message) > limit:
        self._too_large(message)
        return
    frame = classify(message)
    self._metrics.frames_by(frame.kind).inc()
    self._answer(opened, frame)
    if frame.kind == "event":
        self._hold(message, sys.getsizeof(message))
    elif frame.kind == "control" and frame.detail == "error":
        websocket.flood.warning(
            "feed sent an error notice", extra={"notice": str(frame.item)[:500]}
        )
    elif frame.kind == "garbage":
        websocket.flood.debug("feed sent garbage", extra={"detail": frame.detail})


def _old_hold(self: WebSocketSource, item: Any, size: int) -> None:
    """A copy, on purpose (the A/B's old side), of `WebSocketSource._hold` before the backlog
    gauge was read at scrape time: it was set for every frame. (The old publisher also set it
    once per batch: not patched, a running task keeps its method, and it is 1/50 of this.)"""
    s = self._settings
    full = self._held and self._held_bytes + size > s.max_backlog_bytes
    if self._held >= s.max_inflight or full:
        self._drop()
        return
    self._held += 1
    self._held_bytes += size
    self._queue.put_nowait((item, size))
    self._metrics.websocket_backlog.set(self._held)


# Each variant's old side, given the source (the backlog is the source's own).
VARIANTS: dict[str, Callable[[WebSocketSource], contextlib.AbstractContextManager[None]]] = {
    "parsed": lambda _: patched((WebSocketSource, "_take", _old_take)),
    "gauge": lambda _: patched((WebSocketSource, "_hold", _old_hold)),
    "all": lambda _: patched(
        (WebSocketSource, "_take", _old_take), (WebSocketSource, "_hold", _old_hold)
    ),
    "gc-threshold": lambda _: gc_threshold(CPYTHON_GEN0_THRESHOLD),
    "gc-freeze": lambda _: gc_unfrozen(),
    "control": lambda _: contextlib.nullcontext(),
}


class _Counting(_Producer):
    """`_Producer`, counting the records it took."""

    sent = 0

    async def send(self, topic: str, **kw: Any) -> asyncio.Future[Any]:
        self.sent += 1
        return await super().send(topic, **kw)


def _source() -> WebSocketSource:
    settings = load_tool_settings()
    metrics = Metrics()
    sink = kafka.KafkaSink(settings.kafka, metrics)
    sink._producer = _Counting()
    router = Router(settings.topics, settings.routing.rules)
    pipeline = pipeline_for(settings, sink, router, metrics)
    return WebSocketSource(settings.websocket, settings.pinecall, pipeline, metrics)


def _frames(salt: int, first: int, count: int) -> list[str]:
    """`count` event frames of the current time, as websockets decodes text frames."""
    now = time.time()
    return [orjson.dumps(entry(salt, first + k, now)).decode() for k in range(count)]


async def _timed(source: WebSocketSource, frames: list[str], burst: int) -> float:
    """CPU seconds to take `frames` a burst at a time and publish them all."""
    opened = _Opened(ws=cast(Any, None), expires_at=None)  # subscribed and answered
    # A publisher per round, so that it runs the variant's methods and waits on its backlog.
    publisher = asyncio.create_task(source._publish_forever())
    sent = source._pipeline._sink._producer.sent  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    started = time.process_time()
    for at in range(0, len(frames), burst):
        for message in frames[at : at + burst]:
            source._take(opened, message)
        await asyncio.sleep(0)  # the reader waits for the next burst: the publisher runs
    # Polled, not an Event: the publisher is today's, with nothing to tell a waiter.
    while source._held:  # noqa: ASYNC110
        await asyncio.sleep(0)
    seconds = time.process_time() - started
    publisher.cancel()
    await asyncio.wait({publisher})
    producer = source._pipeline._sink._producer  # type: ignore[attr-defined]
    if producer.sent != sent + len(frames):
        raise RuntimeError(f"{producer.sent - sent} records sent for {len(frames)} frames")
    return seconds


async def measure(variant: str, rounds: int, per_round: int, burst: int) -> Any:
    """`rounds` paired rounds of `per_round` frames of the old and the new variant each."""
    source = _source()
    return await paired(
        lambda: VARIANTS[variant](source),
        lambda n, k: _frames(n, k * per_round, per_round),
        lambda frames: _timed(source, frames, burst),
        rounds,
        per_round,
    )


async def profile(per_round: int, burst: int) -> None:
    """Own CPU time per function over ten rounds of the new variant."""
    source = _source()
    await _timed(source, _frames(0, 0, per_round), burst)
    batches = [_frames(n, 0, per_round) for n in range(1, 11)]
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for frames in batches:
        await _timed(source, frames, burst)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--gc-threshold", type=int, help="gen 0's, the whole run (the new side)")
    args = parser.parse_args(argv)
    set_gen0_threshold(args.gc_threshold)

    async def each() -> None:
        if args.profile:
            await profile(args.per_round, args.burst)
            return
        # The collector's variants only when asked: they measure a setting, not a change.
        for variant in args.variant or [v for v in sorted(VARIANTS) if not v.startswith("gc-")]:
            outcome = await measure(variant, args.rounds, args.per_round, args.burst)
            print(report(variant, outcome, "frame"), flush=True)

    run(each())


if __name__ == "__main__":
    main()
