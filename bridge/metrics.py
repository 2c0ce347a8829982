"""Every Prometheus metric the bridge exports, in one container with its registry injected."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bridge.dedup.kept import DropReason
from bridge.rejections import RejectReason
from bridge.sources.frames import FrameKind
from bridge.sources.reconnect import DisconnectReason

if TYPE_CHECKING:
    from bridge.normalise.event import Channel

# `*_created` series double the exposition and no dashboard or alert of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "pinecall_bridge"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Milliseconds matter at the low end (the p99 goal is 25 ms); minutes at the high end (lag).
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# With several worker processes the pod's /metrics has this once, for the pod (bridge/workers).
# The Kafka clients bridge.sink.quotas watches, by their `client` label (the feed lease's,
# "feed_lease", too: exported once the feed is, register_feed).
THROTTLE_WATCHED = (
    "ingest_producer",
    "dedup_consumer",
    "dedup_producer",
    "dedup_restore_consumer",
    "dedup_offsets_client",
    "dedup_hangwatch_consumer",
)
# Feed events lost (events_rejected_total{channel="websocket"}): PinecallBridgeFeedBacklogDropping.
FEED_LOSSES: tuple[RejectReason, ...] = (
    "backlog_full",
    "shutdown",
    "shutdown_unreceived",
    "too_large",
    "too_large_unreceived",
)
# Why a kept window could not serve: kept.py's reasons, or "torn" (its gap's read failed, or
# the stage producer it needs did not start).
KEPT_DROP_REASONS = (*get_args(DropReason), "torn")
WORKERS_UNREACHABLE = f"{PREFIX}_workers_unreachable"
WORKERS_UNREACHABLE_HELP = (
    "Worker processes of this pod left out of this scrape (no answer in time); 0 with one."
)


class Children:
    """A labelled metric's children by label values: labels() is too slow for every event."""

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


def observe_all(histogram: Histogram, amounts: Iterable[float]) -> None:
    """`histogram.observe` of each amount, each bucket then incremented once, by its count."""
    # Observed one by one, the dedup stage's two latency histograms were an eighth of its CPU per
    # record: each observe scans the bounds in Python and takes two locks (bench/OPTIMISATIONS.md).
    # prometheus_client's own attributes (0.26), read defensively: without them, one by one.
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    added, observed = 0.0, 0
    for amount in amounts:
        added += amount
        observed += 1
        at = bisect_left(bounds, amount)
        # observe's own test: the first bound not below it (none for a NaN, which only the sum
        # takes).
        if at < len(bounds) and amount <= bounds[at]:
            counts[at] += 1
    if not observed:
        return
    # A labelled parent: observe would refuse it too.
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    total.inc(added)
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class Metrics:
    """Labels are bounded: channel, type (known vocabulary or `other`), topic, reason."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.received = Counter(
            f"{PREFIX}_events_received_total",
            "Events received, by channel and type.",
            ["channel", "type"],
            registry=r,
        )
        self.ingested = Counter(
            f"{PREFIX}_events_ingested_total",
            "Records acknowledged by Kafka in the ingest topic (webhooks are answered then).",
            ["channel"],
            registry=r,
        )
        self.published = Counter(
            f"{PREFIX}_events_published_total",
            "Records the dedup stage wrote to an output topic in a committed transaction.",
            ["topic"],
            registry=r,
        )
        self.duplicates = Counter(
            f"{PREFIX}_events_duplicate_total",
            "Ingest records the dedup stage dropped: their id reached the ingest topic within the"
            " TTL.",
            ["channel"],
            registry=r,
        )
        self.rejected = Counter(
            f"{PREFIX}_events_rejected_total",
            "Requests or events refused, by channel and reason.",
            ["channel", "reason"],
            registry=r,
        )
        # `listener`: the webhook port (BRIDGE_HTTP__PORT) or the admin port; the admin
        # port's series exist only once it is set up (bridge/http_timeouts.admin_runner).
        self.http_timed_out = Counter(
            f"{PREFIX}_http_connections_timed_out_total",
            "Connections the HTTP edge closed because a client was too slow, by listener, phase.",
            ["listener", "phase"],
            registry=r,
        )
        for phase in ("header", "body"):  # at 0 from the start, for increase()
            self.http_timed_out.labels("webhook", phase)
        self.http_connections_open = Gauge(
            f"{PREFIX}_http_connections_open",
            "Connections a listener serves now, idle keep-alive ones included (this process).",
            ["listener"],
            registry=r,
        )
        self.http_connections_max = Gauge(
            f"{PREFIX}_http_connections_max",
            "The cap on http_connections_open in force in this process: the webhook port's"
            " BRIDGE_HTTP__MAX_CONNECTIONS, lowered if the open-files limit cannot hold it;"
            " the admin port's 64.",
            ["listener"],
            registry=r,
        )
        self.http_connections_refused = Counter(
            f"{PREFIX}_http_connections_refused_total",
            "Connections made past a listener's cap, unread: answered 503 (Retry-After,"
            " Connection: close), or closed at once while too many others were being refused.",
            ["listener", "how"],
            registry=r,
        )
        self.http_connections_failed = Counter(
            f"{PREFIX}_http_connections_failed_total",
            "Connections closed as they were made because their HTTP protocol could not be"
            " built (a bug, logged): the listener keeps accepting.",
            ["listener"],
            registry=r,
        )
        self.dead_lettered = Counter(
            f"{PREFIX}_events_dead_lettered_total",
            "Authenticated input that is not an event, sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter(
            f"{PREFIX}_events_dropped_total",
            "Events deliberately not published (ephemeral, marker).",
            ["reason"],
            registry=r,
        )
        self.dedup_output_too_large = Counter(
            f"{PREFIX}_dedup_output_too_large_total",
            "Output records the dedup stage skipped because their topic cannot take them (its"
            " limit is below the ingest topic's): answered 2xx, published nowhere.",
            registry=r,
        )
        self.dedup_output_keyless_refused = Counter(
            f"{PREFIX}_dedup_output_keyless_refused_total",
            "Output records without a key the dedup stage skipped because their topic compacts"
            " (which refuses them): answered 2xx, published nowhere.",
            registry=r,
        )
        self.dedup_output_unknown_topic = Counter(
            f"{PREFIX}_dedup_output_unknown_topic_total",
            "Output records the dedup stage skipped because they name a topic it is not configured"
            " with and that does not exist, or this user may not describe: answered 2xx, published"
            " nowhere.",
            registry=r,
        )
        self.publish_failures = Counter(
            f"{PREFIX}_publish_failures_total",
            "Records Kafka did not acknowledge in time or refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.publish_duration = Histogram(
            f"{PREFIX}_publish_duration_seconds",
            "From receipt by the bridge to Kafka's acknowledgement in the ingest topic.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_loop_lag = Histogram(
            f"{PREFIX}_event_loop_lag_seconds",
            "How late the event loop woke a timer due every 0.25 s: time it was blocked or"
            " starved of CPU, which delays every request in flight.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            f"{PREFIX}_end_to_end_seconds",
            "From receipt by the bridge to its output record's committed transaction (not for"
            " events a redrive offered again: their receipt was the first one).",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.event_lag = Histogram(
            f"{PREFIX}_event_lag_seconds",
            "From the event's own timestamp to its output record's committed transaction.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.dedup_entries = Gauge(
            f"{PREFIX}_dedup_entries",
            "Ids remembered by the dedup stage, over the partitions this process owns.",
            registry=r,
        )
        self.dedup_window_bytes = Gauge(
            f"{PREFIX}_dedup_window_bytes",
            "Estimated memory of the dedup stage's windows, over the partitions this process owns.",
            registry=r,
        )
        self.inflight = Gauge(
            f"{PREFIX}_inflight_events",
            "Events sent to the ingest topic and not yet acknowledged.",
            registry=r,
        )
        self.webhook_in_flight_bytes = Gauge(
            f"{PREFIX}_webhook_in_flight_bytes",
            "What the webhooks being handled are charged against the bound in force,"
            " max_in_flight_bytes raised to one request's charge (max_body_bytes plus a request's"
            " overhead) when below it: each its Content-Length (max_body_bytes when chunked) plus"
            " a request's overhead, and once parsed an overhead per event.",
            registry=r,
        )
        # The dedup stage. Partition labels are bounded by the ingest topic's partition count.
        self.dedup_lag_records = Gauge(
            f"{PREFIX}_dedup_lag_records",
            "Ingest records not yet processed by the dedup stage, by owned ingest partition.",
            ["partition"],
            registry=r,
        )
        self.dedup_lag_seconds = Gauge(
            f"{PREFIX}_dedup_lag_seconds",
            "While behind, about how long the oldest unprocessed ingest record has waited (0 when"
            " caught up), by owned partition.",
            ["partition"],
            registry=r,
        )
        self.dedup_fetch_age = Gauge(
            f"{PREFIX}_dedup_fetch_age_seconds",
            "Seconds since the broker last answered the dedup stage's fetch for an owned ingest"
            " partition (0 while it is held, not fetched on purpose), by owned partition.",
            ["partition"],
            registry=r,
        )
        self.ingest_partitions = Gauge(
            f"{PREFIX}_ingest_partitions",
            "Partitions of the ingest topic in this process's Kafka metadata (0 until known).",
            registry=r,
        )
        self.output_held = Gauge(
            f"{PREFIX}_output_stable_offset_held_seconds",
            "How long the output topic's most held partition has kept its last stable offset with"
            " records beyond it (0: none): read_committed readers stop there.",
            ["topic"],
            registry=r,
        )
        # Topic and problem are both bounded: the bridge's own topics, and a fixed vocabulary.
        self.topic_problem = Gauge(
            f"{PREFIX}_topic_problem",
            "1 while the dedup stage's topic check finds this problem with one of the bridge's"
            " topics (missing, not_allowed, unreadable; for the ingest topic also timestamp_type,"
            " retention_ms, retention_bytes, cleanup_policy; for an output topic compacted; for"
            " any, by its replicas and min.insync.replicas, unwritable, all_in_sync or"
            " leader_alone), 0 once it is gone.",
            ["topic", "problem"],
            registry=r,
        )
        # Topic bounded as topic_problem's: the bridge's own configured topics only.
        self.topic_partitions_changed = Counter(
            f"{PREFIX}_topic_partitions_changed_total",
            "Changes of one of the bridge's topics' partition count seen while running (made"
            " again, or partitions added): calls' keys map to other partitions from then on.",
            ["topic"],
            registry=r,
        )
        self.dedup_partitions_owned = Gauge(
            f"{PREFIX}_dedup_partitions_owned",
            "Ingest partitions this process owns and processes (restored and fenced in).",
            registry=r,
        )
        self.dedup_partitions_held = Gauge(
            f"{PREFIX}_dedup_partitions_held",
            "Owned ingest partitions held at a record of a later release's format: nothing after it"
            " is decided here until a pod of that release owns the partition.",
            registry=r,
        )
        self.dedup_partitions_starting = Gauge(
            f"{PREFIX}_dedup_partitions_starting",
            "Ingest partitions assigned to this process whose first start is under way (committed"
            " offset read, a wait for a restore turn, the restore); a failed one is not counted.",
            registry=r,
        )
        self.dedup_offsets_unstable = Gauge(
            f"{PREFIX}_dedup_offsets_unstable_seconds",
            "How long the longest of this process's partitions still waiting to start has had its"
            " committed offset answered unstable (0: none): a transaction holding the group's"
            " offsets has not ended, and the partition is not processed.",
            registry=r,
        )
        self.dedup_restore_duration = Histogram(
            f"{PREFIX}_dedup_restore_duration_seconds",
            "Time to rebuild one partition's seen-set on assignment, before it processes anything.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=r,
        )
        self.dedup_restores = Counter(
            f"{PREFIX}_dedup_restores_total",
            "Partitions started here, by kind: resumed (a kept window, nothing decided since),"
            " gap (a kept window, only the records decided since read), full (a whole restore).",
            ["kind"],
            registry=r,
        )
        self.dedup_kept_dropped = Counter(
            f"{PREFIX}_dedup_kept_dropped_total",
            "Kept windows of partitions assigned back that could not serve, each restored whole"
            " instead, by reason: aged, reset, behind, deleted, recreated, unknown, progress"
            " (README), or torn (its gap's read, or the stage producer's start, failed).",
            ["reason"],
            registry=r,
        )
        self.dedup_partitions_kept = Gauge(
            f"{PREFIX}_dedup_partitions_kept",
            "Revoked ingest partitions whose window this process keeps in case they come back.",
            registry=r,
        )
        self.dedup_restored_ids = Counter(
            f"{PREFIX}_dedup_restored_ids_total",
            "Ids read back from the ingest topic while restoring partitions.",
            registry=r,
        )
        self.dedup_restore_records_left = Gauge(
            f"{PREFIX}_dedup_restore_records_left",
            "Ingest records (offsets) the partitions being restored still have to read.",
            registry=r,
        )
        self.dedup_restore_partitions_waiting = Gauge(
            f"{PREFIX}_dedup_restore_partitions_waiting",
            "Ingest partitions whose restore waits for a restore slot"
            " (BRIDGE_DEDUP__RESTORE_CONCURRENCY): their records are not yet in records_left.",
            registry=r,
        )
        self.dedup_restore_partitions_reading = Gauge(
            f"{PREFIX}_dedup_restore_partitions_reading",
            "Ingest partitions whose restore holds a restore slot: finding its window's start,"
            " then reading.",
            registry=r,
        )
        self.dedup_restore_records_read = Counter(
            f"{PREFIX}_dedup_restore_records_read_total",
            "Ingest records (offsets) read by restores, as they read them.",
            registry=r,
        )
        self.dedup_transactions = Counter(
            f"{PREFIX}_dedup_transactions_total",
            "Dedup-stage transactions by outcome: committed, aborted, or unknown (a commit"
            " sent and unanswered: the coordinator commits or aborts it).",
            ["outcome"],
            registry=r,
        )
        self.dedup_partitions_lost = Counter(
            f"{PREFIX}_dedup_partitions_lost_total",
            "Partitions given up without a clean revocation: fenced, timeout, error or producer"
            " (the stage's transactional producer could not be started or replaced).",
            ["reason"],
            registry=r,
        )
        self.dedup_evicted_early = Counter(
            f"{PREFIX}_dedup_evicted_early_total",
            "Ids forgotten before their TTL because max_entries_per_partition was reached.",
            registry=r,
        )
        self.dedup_records_expired = Counter(
            f"{PREFIX}_dedup_records_expired_total",
            "Ingest records (offsets) retention deleted before the dedup stage decided them:"
            " answered 2xx, published nowhere.",
            registry=r,
        )
        self.dedup_offset_resets = Counter(
            f"{PREFIX}_dedup_offset_resets_total",
            "Partitions taken at a committed offset the bridge did not commit (an operator's"
            " reset): moved (its mark names another offset) or unmarked (it has none); or with"
            " none at all though the partition was in use before (missing: deleted or expired).",
            ["kind"],
            registry=r,
        )
        self.ingest_invalid = Counter(
            f"{PREFIX}_ingest_invalid_total",
            "Ingest records the dedup stage could not read (not written by this bridge); skipped.",
            registry=r,
        )
        # The WebSocket feed's series are exported only once `register_feed()` is called, by the
        # parts of a process with the feed enabled: elsewhere a 0 would read as a feed that is down.
        self.feed_lease_held = Gauge(
            f"{PREFIX}_feed_lease_held",
            "1 while this process holds the WebSocket feed lease (at most one process should).",
            registry=None,
        )
        self.feed_handover_gap = Histogram(
            f"{PREFIX}_feed_handover_gap_seconds",
            "Between the previous feed lease holder's last read and this one's first connection,"
            " observed by the new holder: nobody read the WebSocket feed meanwhile.",
            buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
            registry=None,
        )
        self.kafka_connected = Gauge(
            f"{PREFIX}_kafka_connected",
            "1 when the Kafka producer reaches the cluster.",
            registry=r,
        )
        self.broker_clock_offset = Gauge(
            f"{PREFIX}_broker_clock_offset_seconds",
            "How far the broker's clock stood from this process's (+ ahead) at the ingest topic's"
            " last acknowledged record (its LogAppendTime): 0 within the send-to-ack interval.",
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the bridge reports ready.", registry=r)
        self.listening = Gauge(
            f"{PREFIX}_listening",
            "1 while the webhook port is bound: a restarted worker binds it only once ready.",
            registry=r,
        )
        self.websocket_connected = Gauge(
            f"{PREFIX}_websocket_connected",
            "1 while the WebSocket feed is connected.",
            registry=None,
        )
        self.websocket_reconnects = Counter(
            f"{PREFIX}_websocket_reconnects_total",
            "WebSocket feed reconnections, by why the previous attempt ended.",
            ["reason"],
            registry=None,
        )
        self.websocket_down_seconds = Counter(
            f"{PREFIX}_websocket_down_seconds_total",
            "Seconds the WebSocket feed ran here (lease held) without a subscribed connection:"
            " what it sent meanwhile is missed (a refused subscription counts as down, as does a"
            " shutdown's wait to publish the feed's backlog before the lease is handed on).",
            registry=None,
        )
        self.websocket_frames = Counter(
            f"{PREFIX}_websocket_frames_total",
            "WebSocket frames received: event, control or garbage.",
            ["kind"],
            registry=None,
        )
        self.worker_restarts = Counter(
            f"{PREFIX}_worker_restarts_total",
            "Restarts of this worker process after it exited unexpectedly (several workers only).",
            registry=r,
        )
        self.workers_unreachable = Gauge(WORKERS_UNREACHABLE, WORKERS_UNREACHABLE_HELP, registry=r)
        self.task_crashes = Counter(
            f"{PREFIX}_task_crashes_total",
            "Crashes of a long-lived task (restarted, or the process exits after too many).",
            ["task"],
            registry=r,
        )
        self.kafka_client_restarts = Counter(
            f"{PREFIX}_kafka_client_restarts_total",
            "Kafka clients replaced because their aiokafka background task died, by client.",
            ["client"],
            registry=r,
        )
        self.kafka_throttle = Counter(
            f"{PREFIX}_kafka_throttle_seconds_total",
            "Throttle time Kafka brokers answered with (a client quota), by client: summed over"
            " responses, so several connections throttled at once count more than wall time.",
            ["client"],
            registry=r,
        )
        self.kafka_throttled_responses = Counter(
            f"{PREFIX}_kafka_throttled_responses_total",
            "Kafka responses that carried a throttle time (a client quota), by client.",
            ["client"],
            registry=r,
        )
        self.websocket_backlog = Gauge(
            f"{PREFIX}_websocket_backlog_events",
            "Feed events read from the socket and not yet acknowledged by Kafka.",
            registry=None,
        )
        self._feed_registered = False
        self.secret_reloads = Counter(
            f"{PREFIX}_secret_reloads_total",
            "Changes of a secret's file (BRIDGE_SECRETS_DIR) while running, by secret and result:"
            " reloaded, or invalid or unreadable (the previous value kept).",
            ["secret", "result"],
            registry=r,
        )
        self.webhook_registered = Gauge(
            f"{PREFIX}_webhook_registered",
            "1 while the organisation's Pinecall webhook is known to point at this bridge "
            "(exported by processes that register it).",
            registry=None,
        )
        self._registration_registered = False
        # prometheus_client's standard process_* series (open and max descriptors, resident
        # memory, CPU seconds, start time): the only view of a process nearing its open-files
        # limit where no source counts EMFILE (webhooks only). Read from /proc/self at each
        # scrape, on the loop: three small reads and a listing of fd/ (measured: 0.05 ms, and
        # about 0.5 ms more per 1,000 open descriptors). Outside Linux it exports nothing.
        self.process = ProcessCollector(registry=r)
        # The call-log source (SSE). Never a label per call: calls are unbounded.
        self.sse_enabled = Gauge(
            f"{PREFIX}_sse_enabled", "1 when the call-log (SSE) source runs here.", registry=r
        )
        self.sse_org_feed_connected = Gauge(
            f"{PREFIX}_sse_org_feed_connected",
            "1 while this process reads the organisation feed (call discovery).",
            registry=r,
        )
        self.sse_calls_followed = Gauge(
            f"{PREFIX}_sse_calls_followed",
            "Call logs this process follows now (at most BRIDGE_SSE__MAX_CALLS).",
            registry=r,
        )
        self.sse_calls_queued = Gauge(
            f"{PREFIX}_sse_calls_queued",
            "Calls waiting for a free follower slot, in arrival order.",
            registry=r,
        )
        self.sse_calls_dropped = Counter(
            f"{PREFIX}_sse_calls_dropped_total",
            "Calls not queued: BRIDGE_SSE__MAX_CALLS followed and ten times as many waiting. The"
            " call list is read again once the queue drains. Also ended calls the list found that"
            " waited in the queue until their end left the dedup window.",
            registry=r,
        )
        self.sse_reconnects = Counter(
            f"{PREFIX}_sse_reconnects_total",
            "SSE reconnections, by stream (call or org_feed) and why the previous one ended.",
            ["stream", "reason"],
            registry=r,
        )
        self.sse_gaps = Counter(
            f"{PREFIX}_sse_gaps_total",
            "log.gap markers: a call log's stream skipped entries this reader fell behind on.",
            registry=r,
        )
        self.sse_gaps_filled = Counter(
            f"{PREFIX}_sse_gaps_filled_total",
            "Gaps whose entries were read from the JSON pages and acknowledged by Kafka.",
            registry=r,
        )
        self.sse_gap_entries = Counter(
            f"{PREFIX}_sse_gap_entries_total",
            "Entries read from the JSON pages to fill gaps.",
            registry=r,
        )
        self.sse_calls_given_up = Counter(
            f"{PREFIX}_sse_calls_given_up_total",
            "Calls whose log was left before its end, by reason: not_found (404), gone (410),"
            " forbidden (403s) or refused (other refusals), those two after"
            " BRIDGE_SSE__GIVE_UP_AFTER_SECONDS of them; the rest of their entries is not read.",
            ["reason"],
            registry=r,
        )
        self.sse_calls_read_to_end = Counter(
            f"{PREFIX}_sse_calls_read_to_end_total",
            "Calls whose log a JSON page found sealed and read to its end after a stream closed"
            " with nothing new: no call.score, no 204 (its last lines ephemeral, say).",
            registry=r,
        )
        self.sse_behind_live = Histogram(
            f"{PREFIX}_sse_behind_live_seconds",
            "From a call-log entry's own timestamp to Kafka's acknowledgement of it.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )

        # Series that alerts take increase() of exist from the start: a first fencing or abort
        # must count as an increase from 0, not as the series appearing.
        for reason in ("fenced", "timeout", "error", "producer"):
            self.dedup_partitions_lost.labels(reason)
        for outcome in ("committed", "aborted", "unknown"):
            self.dedup_transactions.labels(outcome)
        for client in ("ingest_producer", "dedup_consumer"):
            self.kafka_client_restarts.labels(client)
        for client in THROTTLE_WATCHED:
            self.kafka_throttle.labels(client)
            self.kafka_throttled_responses.labels(client)
        for kind in ("moved", "unmarked", "missing"):  # bridge.dedup.offsetmark.RESET_KINDS
            self.dedup_offset_resets.labels(kind)
        for kind in ("resumed", "gap", "full"):
            self.dedup_restores.labels(kind)
        for dropped in KEPT_DROP_REASONS:
            self.dedup_kept_dropped.labels(dropped)

        # The per-event series, resolved once per label combination (labels are bounded).
        self.received_by = Children(self.received)
        self.published_by = Children(self.published)
        self.ingested_by = Children(self.ingested)
        self.duplicates_by = Children(self.duplicates)
        self.frames_by = Children(self.websocket_frames)

    def rejection(self, channel: Channel, reason: RejectReason) -> Counter:
        """`events_rejected_total`'s child: every count comes through here, for mypy to check."""
        return self.rejected.labels(channel, reason)

    def register_feed(self) -> None:
        """Export the WebSocket feed's series (idempotent): a process with the feed enabled."""
        if self._feed_registered:
            return
        self._feed_registered = True
        for metric in (
            self.feed_lease_held,
            self.feed_handover_gap,
            self.websocket_connected,
            self.websocket_reconnects,
            self.websocket_down_seconds,
            self.websocket_frames,
            self.websocket_backlog,
        ):
            self.registry.register(metric)
        # At 0 from the process's start for increase() and rate(), not from the lease's
        # acquisition: the feed connects at once then, and a series first scraped above 0 (a
        # replay's burst past the backlog, a first garbage frame) shows no increase.
        self.kafka_client_restarts.labels("feed_lease")
        self.kafka_throttle.labels("feed_lease")
        self.kafka_throttled_responses.labels("feed_lease")
        for lost in FEED_LOSSES:
            self.rejection("websocket", lost)
        for reason in get_args(DisconnectReason):
            self.websocket_reconnects.labels(reason)
        for kind in get_args(FrameKind):
            self.frames_by(kind)

    def register_registration(self) -> None:
        """Export `webhook_registered` (idempotent): a process that registers the webhook."""
        if not self._registration_registered:
            self._registration_registered = True
            self.registry.register(self.webhook_registered)

    def render(self) -> bytes:
        """The exposition text for /metrics."""
        return generate_latest(self.registry)
