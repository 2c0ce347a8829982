"""A traffic run: calls played a few at a time, every event ledgered, then sent on its way.

Every entry goes to its call's log; the channel says which pushes carry it too. An alert a call
ends with is a line of its agent's log, posted by webhook alone, as the platform posts alerts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.normalise.shapes import content_id
from bridge.simulator.alerts import AlertPlan, plan_alert
from bridge.simulator.calllog import CallLogs
from bridge.simulator.config import SimulatorConfig, TrafficSpec
from bridge.simulator.delivery import Deliverer
from bridge.simulator.feed import EventRef, Feed
from bridge.simulator.frames import carries, event_frame, frame_type
from bridge.simulator.hooks import HookStore
from bridge.simulator.ledger import Ledger, ledger_record
from bridge.simulator.pacing import Pacer
from bridge.simulator.plan import FrameShape, plan_event
from bridge.simulator.records import Delivery
from bridge.simulator.script import CallScript, Step, call_rng, iter_calls
from bridge.simulator.stats import Stats
from bridge.simulator.wire import alert_body, alert_wire, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrafficReport:
    seed: int
    calls: int
    events: int
    seconds: float
    counters: dict[str, int]  # how much each Stats counter grew during the run
    records: list[dict[str, Any]]  # this run's ledger records (empty when records are not kept)


class _FrameLane:
    """A call's WebSocket frames in seq order; a frame may wait for its webhook copy's answer."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self._held: deque[tuple[asyncio.Future[Any] | None, str, EventRef, int]] = deque()
        self._task: asyncio.Task[None] | None = None

    def push(
        self, gate: asyncio.Future[Any] | None, frame: str, ref: EventRef, copies: int
    ) -> None:
        if gate is None and not self._held:
            self._feed.publish(frame, ref, copies)
            return
        self._held.append((gate, frame, ref, copies))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._release())

    async def finish(self) -> None:
        if self._task is not None:
            await self._task

    async def _release(self) -> None:
        while self._held:
            gate, frame, ref, copies = self._held[0]
            if gate is not None:
                await gate
            self._held.popleft()
            self._feed.publish(frame, ref, copies)


class Traffic:
    def __init__(
        self,
        spec: TrafficSpec,
        config: SimulatorConfig,
        *,
        hooks: HookStore,
        deliverer: Deliverer,
        feed: Feed,
        ledger: Ledger,
        stats: Stats,
        calllogs: CallLogs | None = None,
    ) -> None:
        self.spec = spec
        self.seed = spec.seed if spec.seed is not None else secrets.randbits(32)
        self._config = config
        self._hooks = hooks
        self._deliverer = deliverer
        self._feed = feed
        self._ledger = ledger
        self._stats = stats
        self._calllogs = calllogs if calllogs is not None else CallLogs()
        self._pacer = Pacer(spec.rate)
        self._records: list[dict[str, Any]] = []
        self._settling: set[asyncio.Task[None]] = set()
        self._events = 0

    async def play(self) -> TrafficReport:
        """Every call to its end, every delivery finally answered, every frame written."""
        spec = self.spec
        if spec.subscribers:
            async with asyncio.timeout(spec.subscriber_timeout):
                await self._feed.wait_for_subscribers(spec.subscribers)
        if spec.feed_subscribers:
            async with asyncio.timeout(spec.subscriber_timeout):
                await self._calllogs.wait_for_feed_readers(spec.feed_subscribers)
        self._warn_if_nobody_listens()
        before, started = self._stats.as_dict(), time.monotonic()
        log.info("traffic started", extra={"seed": self.seed, "calls": spec.calls})
        # Each call is made as a worker takes it: memory holds the calls in flight, not them all.
        pending = enumerate(iter_calls(self.seed, spec.calls))
        async with asyncio.TaskGroup() as group:
            for _ in range(min(spec.concurrency, spec.calls)):
                group.create_task(self._play_calls(pending))
        await self._deliverer.join()
        await asyncio.gather(*self._settling)
        await self._feed.flush()
        counters = self._stats.since(before)
        report = TrafficReport(
            seed=self.seed,
            calls=spec.calls,
            events=self._events,
            seconds=time.monotonic() - started,
            counters=counters,
            records=self._records,
        )
        log.info("traffic done", extra={"seed": self.seed, "events": report.events})
        return report

    def _warn_if_nobody_listens(self) -> None:
        if (self.spec.webhook or self.spec.alerts) and not self._hooks.all():
            log.warning("no webhook is registered: the webhook copies and alerts go nowhere")
        if self.spec.websocket and not self._feed.subscribed():
            log.warning("no WebSocket connection is subscribed: the frames go nowhere")

    async def _play_calls(self, pending: Iterator[tuple[int, CallScript]]) -> None:
        # The workers share one iterator, so calls start in order, `concurrency` at a time.
        for index, script in pending:
            await self._play_call(index, script)

    async def _play_call(self, index: int, script: CallScript) -> None:
        rng = call_rng(self.seed, index, "plan")
        lane = _FrameLane(self._feed)
        for step in script.steps:
            # Even a zero wait yields, so that concurrent calls interleave at full speed.
            await asyncio.sleep(self._pacer.delay(time.monotonic()))
            self._emit(script, step, rng, lane)
            self._events += 1
        # A call log seals itself at its last step, `call.score`, as the platform's does.
        spec = self.spec
        alert = plan_alert(
            call_rng(self.seed, index, "alert"),
            script,
            probability=spec.alerts,
            duplicates=spec.duplicates,
            day=datetime.now(UTC).date().isoformat(),
        )
        if alert is not None:
            self._alert(script.agent, alert)
        await lane.finish()

    def _alert(self, agent: str, alert: AlertPlan) -> None:
        entry = self._calllogs.agent_entry(agent, alert.type, alert.data, time.time())
        body = alert_body(entry)
        # No id and no seq on the wire: the bridge's id for it is its content's.
        record = ledger_record(entry, ("webhook",), event_id=content_id(body))
        self._stats.alerts_generated += 1
        wire = alert_wire(body)
        answers = [
            self._deliverer.submit(
                hook, wire, call=f"@{agent}", seq=entry["seq"], event_type=alert.type, copy=copy
            )
            for copy in range(alert.copies)
            for hook in self._hooks.matching(alert.type)
        ]
        settle = asyncio.create_task(self._settle(record, answers))
        self._settling.add(settle)
        settle.add_done_callback(self._settling.discard)

    async def _settle(
        self, record: dict[str, Any], answers: list[asyncio.Future[Delivery]]
    ) -> None:
        """Ledger an alert once its deliveries are answered: whether any copy got through."""
        deliveries = await asyncio.gather(*answers)
        self._record({**record, "delivered": any(d.outcome == "ok" for d in deliveries)})

    def _record(self, record: dict[str, Any]) -> None:
        self._ledger.append(record)
        if self._config.keep_records:
            self._records.append(record)

    def _emit(self, script: CallScript, step: Step, rng: random.Random, lane: _FrameLane) -> None:
        entry = script.entry(step, time.time())
        body = encode(entry)
        config = self._config
        plan = plan_event(
            rng,
            self.spec,
            ephemeral=step.ephemeral,
            documented_ratio=config.ws_documented_ratio,
            legacy_ratio=config.ws_legacy_ratio,
        )
        self._record(ledger_record(entry, plan.channels))
        # The very entry the other channels carry: the same (call, seq), the same ts.
        self._calllogs.append(entry)
        self._stats.events_generated += 1
        if step.ephemeral:
            self._stats.events_ephemeral += 1
        else:
            self._stats.events_durable += 1
        answered: list[asyncio.Future[Delivery]] = []
        for copy in range(plan.webhook_copies):
            for hook in self._hooks.matching(step.type):
                future = self._deliverer.submit(
                    hook, body, call=script.call, seq=step.seq, event_type=step.type, copy=copy
                )
                if copy == 0:
                    answered.append(future)
        if plan.websocket_copies:
            late = plan.websocket_after_webhook and answered
            gate = asyncio.gather(*answered) if late else None
            # A shape that would overwrite the entry's own data (a tool call's `call_id`) is
            # not one Pinecall could have sent it in: the log entry carries it instead.
            shape: FrameShape = plan.shape if carries(entry, plan.shape) else "log-entry"
            ref = EventRef(script.call, step.seq, frame_type(entry, shape), shape)
            lane.push(gate, event_frame(entry, body, shape), ref, plan.websocket_copies)
