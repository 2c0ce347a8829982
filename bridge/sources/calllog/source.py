"""The call-log source: discover calls, follow the ones this process owns, hand them over.

A call is followed by the process whose dedup stage owns the call's ingest partition, so across
replicas each call has one follower and the Kafka group moves them as it moves partitions. On
taking a partition over, its live calls are resumed from what the partition's records say was
published (collected during the dedup restore); the org feed and the call list add the calls
that no record mentions yet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque

import aiohttp

from bridge.cancelling import cancel_and_wait
from bridge.config import KafkaSettings, PinecallSettings, SseSettings
from bridge.ingest.progress import PartitionProgress
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.normalise.ids import shown, valid_call_id
from bridge.pipeline import Pipeline
from bridge.sink.kafka import topic_partitions
from bridge.sources.calllog import calllist
from bridge.sources.calllog.calllist import (
    MAX_PAGES,
    STILL_FLOOR_SECONDS,
    CallListError,
    CallListing,
    CallRow,
    Horizon,
    list_calls,
    read_by,
    retry_delay,
    wanted,
)
from bridge.sources.calllog.follow import GIVE_UP_REASONS, REASONS
from bridge.sources.calllog.follower import Follower, api_headers
from bridge.sources.calllog.keygate import KeyGate
from bridge.sources.calllog.orgfeed import Notice, OrgFeed, notice_until
from bridge.sources.calllog.pageslots import PageSlots
from bridge.sources.calllog.publish import Publisher
from bridge.sources.calllog.roster import TAKEOVER_STEP, Roster, Start, Takeover
from bridge.sources.egress import pinecall_session
from bridge.sources.reconnect import DisconnectReason, ReconnectPolicy
from bridge.supervise import Supervisor

log = logging.getLogger(__name__)
# A drained queue can let many ended calls expire at once: one line for them, each counted.
flood = LogThrottle(log)
_STOP_GRACE = 5.0
# Refused call ids each logged once, up to this many: a stream of distinct ones is only counted.
_LOGGED_REFUSALS = 16
# A sweep's rows announced between yields to the event loop: a list read to its page cap (20,000
# rows) held the loop some 110 ms of CPU in one pass (5 µs a row), every webhook and probe waiting.
SWEEP_ROWS_PER_STEP = 256
# Calls newly found stuck that one read names each in a WARNING of its own; the rest, one line
# with their count: a platform that stopped sealing rows left thousands stuck at once.
STUCK_SAID_BY_NAME = 5


class CallLogSource:
    """A PartitionListener of the dedup stage; start() before the stage joins its group."""

    def __init__(
        self,
        settings: SseSettings,
        api: PinecallSettings,
        kafka: KafkaSettings,
        ingest_topic: str,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        dedup_ttl_seconds: float,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._settings = settings
        self._supervisor = supervisor if supervisor is not None else Supervisor(metrics)
        self._ttl = dedup_ttl_seconds
        self._api = api
        self._kafka = kafka
        self._ingest = ingest_topic
        self._metrics = metrics
        self._stopping = asyncio.Event()
        self._publisher = Publisher(pipeline, metrics, self._stopping)
        self.roster: Roster | None = None
        self._session: aiohttp.ClientSession | None = None
        self._feed: asyncio.Task[None] | None = None
        self._sweep: asyncio.Task[None] | None = None
        self._sweep_again = False
        self._takeovers: deque[Takeover] = deque()  # under way, their steps run by `_taking`
        self._taking: asyncio.Task[None] | None = None
        self._followers: dict[str, tuple[Follower, asyncio.Task[bool]]] = {}
        self._retiring: set[asyncio.Task[bool]] = set()
        self._handovers: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._refused_ids: set[str] = set()
        self._call_list = settings.call_list_path is not None
        # The list answered 404/405 (logged once): it is asked again now and then, not given up.
        self._list_missing = False
        # How far back the list is read: past the lookback, to every call still live, but not
        # for ever to a row the platform never sealed (still for the lookback, at least 6 h).
        self._still_for = max(settings.call_list_lookback_seconds, STILL_FLOOR_SECONDS)
        self._horizon = Horizon(self._still_for)
        # Stuck calls forgotten past calllist.MAX_STUCK so far (a WARNING the first time).
        self._forgotten = 0
        # A page past the lookback failed (a WARNING once, until a read ends well): a long live
        # call keeps every sweep reading back to its start, each maybe refused.
        self._deep_failing = False
        # Failed reads back off like the streams; a read that succeeds starts the delays over.
        self._list_backoff = ReconnectPolicy.of(settings)
        # A refused key holds every follower back at once; one of them asks again.
        self._gate = KeyGate(ReconnectPolicy.of(settings))
        # Gap pages read and held at once by all the followers: a Kafka stall gaps many calls.
        self._pages = PageSlots(settings.max_gap_pages_in_flight)
        # PinecallBridgeRejectionRateHigh's share for the call logs: from 0, for rate() (a series
        # born at its first count shows none).
        metrics.rejection("sse", "invalid_call_id")
        # From 0 for TaskCrashing's increase(): a first small takeover's launch raising in the
        # dedup stage is counted (_crashed_in_stage) before the task is ever spawned.
        metrics.task_crashes.labels("sse-takeover")
        # Alerts take increase() of these: from 0 here, as start() runs only once the bridge is
        # ready (retried while the ingest topic has no partitions), scraped absent until then.
        for reason in REASONS:
            metrics.sse_reconnects.labels("call", reason)
            metrics.sse_reconnects.labels("org_feed", reason)
        for given_up in GIVE_UP_REASONS:
            metrics.sse_calls_given_up.labels(given_up)

    @property
    def max_calls(self) -> int:
        """The calls followed at once, at most (BRIDGE_SSE__MAX_CALLS, or less to fit ulimit -n)."""
        return self._settings.max_calls

    async def start(self) -> None:
        """Learn the ingest partition count (the calls' partitions depend on it), read the feed."""
        if self._session is not None:
            return
        partitions = len(await topic_partitions(self._kafka, [self._ingest]))
        if not partitions:  # the start-up loop retries: the topic may be being created
            raise RuntimeError(f"the ingest topic {self._ingest} has no partitions yet")
        m = self._metrics
        self.roster = Roster(
            partitions, self.max_calls, on_drop=self._dropped, on_expire=self._expired
        )
        self._session = stream_session(self._api.api_url)
        m.sse_enabled.set(1)
        m.sse_calls_followed.set_function(lambda: len(self._followers))
        m.sse_calls_queued.set_function(
            lambda: len(self.roster.waiting) if self.roster is not None else 0
        )
        # After each (re)connect, the call list makes up for the notices missed meanwhile.
        feed = OrgFeed(
            self._session, self._api, self._settings, m, self.noticed, self._schedule_sweep
        )
        self._feed = self._supervisor.spawn("sse-org-feed", feed.run)
        log.info("call-log source started", extra={"ingest_partitions": partitions})

    def key_changed(self) -> None:
        """The API key was reloaded: call logs held back by a refused key try it at once."""
        self._gate.key_changed()

    async def stop(self, deadline: float) -> None:
        """Stop reading; a publish in flight may land until `deadline` (loop time)."""
        self._stopping.set()
        for reader in (self._feed, self._sweep, self._taking):
            if reader is not None:
                await cancel_and_wait(reader)
        followers = list(self._followers.values())
        self._followers.clear()
        tasks = [task for _, task in followers] + list(self._retiring)
        for follower, task in followers:
            if not follower.publishing:
                task.cancel()
        remaining = deadline - asyncio.get_running_loop().time()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._session = self._feed = self._sweep = self._taking = None
        self._takeovers.clear()
        self._metrics.sse_enabled.set(0)

    # The dedup stage's PartitionListener.

    def partition_owned(self, partition: int, progress: PartitionProgress | None) -> None:
        if self.roster is None or self._stopping.is_set():
            return
        if progress is None:  # handed straight back: its calls never stopped
            self.roster.owned.add(partition)
            return
        live = {call: after for call, after in progress.live().items() if self._usable(call)}
        ended = progress.ended()
        # The calls' hashes as the restore computed them, a call at a time: hashing each here
        # held the loop 100-450 ms at a takeover of 20k-40k ended calls.
        takeover = self.roster.take_over(partition, live, ended, progress.key_hashes())
        log.info(
            "call-log partition taken over",
            extra={"partition": partition, "live_calls": len(live), "ended_calls": len(ended)},
        )
        if len(live) + len(ended) <= TAKEOVER_STEP:
            try:
                while not takeover.done:
                    self._launch(takeover.step())
            except Exception:
                # Raised into the dedup stage's install (its mark step skipped), it left this
                # takeover unfinished in the roster with no task to go on: the task finishes it.
                self._takeovers.append(takeover)
                self._crashed_in_stage()
                return
            self._schedule_sweep()
            return
        # A step at a time, the loop free between steps: 40,000 ended calls at once held it
        # 40-95 ms of CPU, every webhook answer and probe waiting. The roster takes the calls as the
        # whole takeover leaves them meanwhile.
        self._takeovers.append(takeover)
        self._run_takeovers()

    def _run_takeovers(self) -> None:
        """The supervised task that fills freed slots, then steps the queued takeovers."""
        if self._taking is None or self._taking.done():
            self._taking = self._supervisor.spawn("sse-takeover", self._take_over)

    def _crashed_in_stage(self) -> None:
        """A launch raised in a dedup stage callback: counted and logged as the takeover task's
        crash, never raised into the stage; that task starts the calls handed back."""
        self._metrics.task_crashes.labels("sse-takeover").inc()
        log.exception("call-log launch crashed in a partition change; its task retries it")
        self._run_takeovers()

    def _refill(self) -> None:
        """Start the calls that freed slots let in, from a dedup stage callback."""
        assert self.roster is not None
        try:
            self._launch(self.roster.refill())
        except Exception:
            # Raised into the stage, it skipped the rest of its rebalance or its partition's
            # loss (no pause, no restart); the calls handed back waited for the next offer.
            self._crashed_in_stage()
            return  # its task starts the calls handed back, and checks the queue then
        # The moved partitions' calls left the queue: it may have drained here, not only when a
        # follower finishes (a live call's follower runs for its whole length).
        self._read_if_drained()

    async def _take_over(self) -> None:
        """The takeovers' steps, one takeover after another; a sweep after each not lost."""
        if self.roster is not None:
            # Run again after a crash: the calls a raising launch handed back start first.
            self._launch(self.roster.refill())
            self._read_if_drained()
        while self._takeovers:
            takeover = self._takeovers[0]
            while not takeover.done:
                self._launch(takeover.step())
                await asyncio.sleep(0)
            self._takeovers.popleft()
            if not takeover.lost:
                # A lost one's read would offer its partition's calls to a roster that no longer
                # owns it (up to MAX_PAGES requests for nothing): the new owner reads the list
                # after its own takeover, and this process after one of its own if it comes back.
                self._schedule_sweep()

    def partitions_assigned(self, partitions: set[int]) -> None:
        if self.roster is None:
            return
        self._retire(self.roster.keep_only(partitions))
        self._refill()

    def partition_lost(self, partition: int) -> None:
        if self.roster is None:
            return
        self._retire(self.roster.lose(partition))
        self._refill()

    # Discovery.

    def noticed(self, notice: Notice) -> None:
        """An org-feed notice: a notice of the call's end may start it only while its end is
        within the dedup window, as for an ended call the list found."""
        self.announce(notice.call, notice_until(notice, time.time(), self._ttl))

    def announce(self, call: str, until: float | None = None) -> None:
        """A call found (a notice, the list): follow it from its start if it is ours and new.

        `until`: the wall time past which an ended call must not start.
        """
        if self.roster is not None and not self._stopping.is_set() and self._usable(call):
            self._launch(self.roster.offer(call, 0, until))

    def _usable(self, call: str) -> bool:
        """False for an id that is no call id (`..`, `a/b`, 1 MB): counted, logged once."""
        if valid_call_id(call):
            return True
        self._metrics.rejection("sse", "invalid_call_id").inc()
        short = shown(call)  # a 1 MB id is not kept, nor logged, whole
        # Not a LogThrottle: that would name one id per 10 s however many differ, and the same
        # id again at each later sweep; this names each of the first ids once, to look them up.
        if short not in self._refused_ids and len(self._refused_ids) < _LOGGED_REFUSALS:
            self._refused_ids.add(short)
            log.error(
                "a call id that cannot name a call log is refused (counted from now on)",
                extra={"call": short},
            )
        return False

    def _schedule_sweep(self) -> None:
        """One call-list read at a time; takeovers meanwhile ask for one more after it."""
        if not self._call_list:
            return
        if self._sweep is not None and not self._sweep.done():
            self._sweep_again = True
            return
        # Supervised: a bug in one read is logged, counted and retried, not a silent dead task.
        self._sweep = self._supervisor.spawn("sse-call-list", self._read_call_list)

    async def _read_call_list(self) -> None:
        assert self._session is not None
        assert self._settings.call_list_path is not None
        while True:
            self._sweep_again = False
            now = time.time()
            # Stillness is timed apart from the list's dates: a wall-clock step is no wait.
            ticks = time.monotonic()
            lookback = self._settings.call_list_lookback_seconds
            try:
                listing = await list_calls(
                    self._session,
                    self._api.api_url + self._settings.call_list_path,
                    api_headers(self._api, "application/json"),
                    oldest=self._horizon.oldest(now, lookback),
                    lookback=now - lookback,
                    timeout_seconds=self._api.request_timeout_seconds,
                )
            except CallListError as exc:
                # A refusal (a bad key, a missing scope) waits at least as long as an auth failure.
                reason: DisconnectReason = "connect_error" if exc.retriable else "auth"
                delay = retry_delay(exc, self._list_backoff.next_delay(reason, None))
                if not exc.unsupported:
                    log.warning(
                        "call list not read; retrying",
                        extra={"error": str(exc), "retry_in_s": round(delay, 1)},
                    )
                elif not self._list_missing:
                    # A proxy's 404 during a deploy must not end the sweeps for good: asked again
                    # now and then, and said once until it is read.
                    self._list_missing = True
                    log.warning(
                        "Pinecall has no call list here: calls are found by the org feed and"
                        " the ingest topic only until it answers; asked again every few minutes",
                        extra={"error": str(exc), "retry_in_s": round(delay, 1)},
                    )
                await asyncio.sleep(delay)
                self._sweep_again = True
            else:
                stuck = self._horizon.read(
                    listing.rows, now, failed=listing.failed is not None, ticks=ticks
                )
                self._said_stuck(stuck)
                self._said_forgotten()
                self._list_backoff.reset()
                if self._list_missing:
                    self._list_missing = False
                    log.info("the call list answers again")
                self._said_cut_short(listing)
                # The window's start is measured from before the read: never too generous.
                for done, row in enumerate(listing.rows, 1):
                    if wanted(row, now, self._ttl):
                        self.announce(row.call, read_by(row, self._ttl))
                    if done % SWEEP_ROWS_PER_STEP == 0:
                        # Safe between any two rows: announce checks the stop and the roster
                        # each time, as for the org feed's notices, which come at any moment.
                        await asyncio.sleep(0)
            if not self._sweep_again:
                return

    def _said_stuck(self, stuck: list[CallRow]) -> None:
        """The calls a read newly found stuck: the first few by name, the rest in one line."""
        for row in stuck[:STUCK_SAID_BY_NAME]:
            log.warning(
                "the call list shows a call live that wrote nothing for hours: Pinecall"
                " may have left it open; the list is no longer read back to it",
                extra={
                    "call": row.call,
                    "started_at": row.started_at,
                    "last_seq": row.last_seq,
                    "still_for_s": self._still_for,
                },
            )
        if (more := len(stuck) - STUCK_SAID_BY_NAME) > 0:
            log.warning(
                "the call list shows more calls live that wrote nothing for hours, not named:"
                " the list is no longer read back to them either",
                extra={"calls": more, "found_stuck": len(stuck), "still_for_s": self._still_for},
            )

    def _said_forgotten(self) -> None:
        """The stuck calls outgrew what is kept: a WARNING the first time, INFO after."""
        forgotten = self._horizon.forgotten
        if forgotten == self._forgotten:
            return
        level = logging.INFO if self._forgotten else logging.WARNING
        self._forgotten = forgotten
        log.log(
            level,
            "the call list shows more calls stuck live than are kept: the least recently shown"
            " are forgotten (one shown again holds the reads back until found stuck again);"
            " raise it with Pinecall",
            extra={"forgotten": forgotten, "kept": calllist.MAX_STUCK},
        )

    def _said_cut_short(self, listing: CallListing) -> None:
        """A read that stopped before its bound: a WARNING when calls within the lookback were
        missed or a best-effort page failed (once until a read ends well), else INFO."""
        if listing.failed is not None:
            level = logging.INFO if self._deep_failing else logging.WARNING
            self._deep_failing = True
            log.log(
                level,
                "call list read past its lookback ended at a failed page: older calls are not"
                " found by this sweep (the next reads to the lookback, or to the oldest live"
                " call this read or the one before showed)",
                extra={"calls": len(listing.rows), "error": listing.failed},
            )
            return
        self._deep_failing = False
        if listing.more is None:
            return
        extra = {"calls": len(listing.rows), "pages": MAX_PAGES}
        if listing.past_lookback:
            # The first read of a process (or one back to a long live call) goes to the cap:
            # an org with more calls than it holds meets it each start, as it should.
            log.info(
                "call list read past its lookback to its page cap: older calls are not found by"
                " this sweep",
                extra=extra,
            )
        else:
            log.warning(
                "call list read only to its page cap: calls within the lookback are not found"
                " by this sweep (a shorter BRIDGE_SSE__CALL_LIST_LOOKBACK_SECONDS reads less)",
                extra=extra,
            )

    # Followers.

    def _launch(self, starts: list[Start]) -> None:
        """A follower task for each start; those not launched are handed back to the roster."""
        launched = 0
        try:
            if self._session is None or self._stopping.is_set():
                return
            for start in starts:
                self._launch_one(start, self._session)
                launched += 1
        finally:
            if launched < len(starts) and self.roster is not None:
                # Else the roster counts them followed with no follower: never followed, nor
                # finished, their slots held until the partition moves.
                self.roster.handed_back(starts[launched:])

    def _launch_one(self, start: Start, session: aiohttp.ClientSession) -> None:
        follower = Follower(
            start.call,
            start.after,
            session=session,
            api=self._api,
            settings=self._settings,
            publisher=self._publisher,
            metrics=self._metrics,
            stopping=self._stopping,
            gate=self._gate,
            pages=self._pages,
        )
        previous = [t for t in self._retiring if t.get_name() == _task_name(start.call)]
        name = _task_name(start.call)
        task = asyncio.create_task(self._follow(follower, previous), name=name)
        self._followers[start.call] = (follower, task)
        task.add_done_callback(functools.partial(self._finished, start.call))

    async def _follow(self, follower: Follower, previous: list[asyncio.Task[bool]]) -> bool:
        # A follower of the same call stopped a moment ago may still be publishing: one at a time.
        if previous:
            await asyncio.gather(*previous, return_exceptions=True)
        log.info("following call log", extra={"call": follower.call, "after": follower.state.acked})
        return await follower.run()

    def _finished(self, call: str, task: asyncio.Task[bool]) -> None:
        current = self._followers.get(call)
        if current is None or current[1] is not task:
            return  # retired or replaced: the roster has already let it go
        del self._followers[call]
        ended = not task.cancelled() and task.exception() is None and task.result()
        if not task.cancelled() and task.exception() is not None:
            log.error("call log follower crashed", exc_info=task.exception())
        if self.roster is not None and not self._stopping.is_set():
            at = current[0].state.ended_at  # its end, by which the roster remembers it
            self._launch(self.roster.finished(call, ended=ended, at=at))
            self._read_if_drained()

    def _read_if_drained(self) -> None:
        """Calls were dropped from a full queue, which has now drained: the call list finds those
        still live or recently ended (the org feed will not repeat them)."""
        roster = self.roster
        if roster is None or self._stopping.is_set() or not roster.missed or roster.waiting:
            return
        roster.missed = False
        # With no partition left, none of them is ours: their new owners read the list.
        if roster.owned:
            self._schedule_sweep()

    def _dropped(self, call: str) -> None:
        """A call the full waiting queue did not take: counted; logged once until it drains."""
        self._metrics.sse_calls_dropped.inc()
        if self.roster is not None and not self.roster.missed:
            log.warning(
                "call-log queue full: calls not followed until it drains, then the call list"
                " is read again",
                extra={"call": call, "waiting": len(self.roster.waiting)},
            )

    def _expired(self, call: str) -> None:
        """An ended call (the list's, or a notice of its end) waited past the dedup window:
        re-reading it would double what was published of it, so it is left alone, and counted
        as dropped."""
        self._metrics.sse_calls_dropped.inc()
        flood.warning(
            "call-log queue: an ended call waited past the dedup window and is not read again",
            extra={"call": call},
        )

    def _retire(self, calls: list[str]) -> None:
        """Stop following `calls` (their partitions moved): after a publish in flight lands."""
        for call in calls:
            entry = self._followers.pop(call, None)
            if entry is None:
                continue
            follower, task = entry
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            handover = asyncio.get_running_loop().create_task(self._retire_one(follower, task))
            self._handovers.add(handover)
            handover.add_done_callback(self._handovers.discard)
        if calls:
            log.info("call logs handed over", extra={"calls": len(calls)})

    @staticmethod
    async def _retire_one(follower: Follower, task: asyncio.Task[bool]) -> None:
        follower.halted = True  # ends it right after a publish in flight
        if follower.publishing:
            await asyncio.wait([task], timeout=_STOP_GRACE)
        task.cancel()


def stream_session(api_url: str) -> aiohttp.ClientSession:
    """One HTTP session for the org feed, every followed call's stream, gap pages and the list.

    aiohttp pools 100 connections by default, and a stream holds its connection for the whole
    call: past 100 followed calls the others, the feed and the gap pages would wait for a free
    connection until their connect timeout, over and over. The roster bounds the streams instead.
    Through the environment's proxy, if any (`pinecall_session`).
    """
    return pinecall_session(api_url, connector=aiohttp.TCPConnector(limit=0))


def _task_name(call: str) -> str:
    return f"sse-call-{call}"
