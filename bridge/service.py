"""The daemon's lifecycle: serve HTTP at once, connect to Kafka, run both stages, drain on stop.

A process runs the two stages: the ingest stage (sources → the ingest topic) and the dedup stage
(the ingest topic → output topics, in transactions). One replica or six, the path is the same;
the WebSocket feed runs only where this process holds the feed lease, and the call-log source
follows the calls of the ingest partitions this process's dedup stage owns. A pod's worker
processes may split the stages (BRIDGE_DEDUP__OWN_PROCESS): then one runs the dedup stage and
the call-log source and serves no port, the others take webhooks and the feed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, get_args

from aiohttp import web
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from bridge import connlimit, listen, logthrottle, looplag
from bridge.app import Readiness, build_admin_app, build_app, probe_routes
from bridge.cancelling import cancel_and_wait
from bridge.config import PinecallSettings, Settings
from bridge.dedup.hangwatch import HangingTransactions
from bridge.dedup.memoryfit import MemoryLimit, WindowFit, read_limit
from bridge.dedup.stage import DedupStage
from bridge.http_timeouts import (
    NOT_LLHTTP,
    HeadTimeoutAppRunner,
    admin_runner,
    request_parser,
    timed_runner,
)
from bridge.ingest.topic import (
    CONFIG_KEYS,
    Finding,
    PartitionWatch,
    Problem,
    TopicProblems,
    ingest_topic_findings,
)
from bridge.metrics import Metrics
from bridge.normalise import Channel
from bridge.normalise.shapes import UnrecognisedReason
from bridge.pipeline import TOO_LARGE, PublishFailure, pipeline_for
from bridge.routing import DropReason, Router
from bridge.secretfiles import secret_file
from bridge.sink.connectsetup import AUTHENTICATION
from bridge.sink.credfiles import PASSWORDS, CredentialFiles, credential_files
from bridge.sink.durability import MIN_INSYNC_REPLICAS, durability_problem
from bridge.sink.kafka import (
    KafkaSink,
    Layout,
    TopicConfigs,
    TopicReads,
    TopicSpec,
    client_options,
    topic_configs_and_layouts,
    topic_layouts,
)
from bridge.sink.limits import CLEANUP_POLICY, compacts
from bridge.sink.topicreads import NOT_YET_VISIBLE, not_yet_visible, unread, unread_kind
from bridge.sources.calllog.source import CallLogSource
from bridge.sources.lease import FeedLease
from bridge.sources.registrar import Registrar
from bridge.sources.secretwatch import API_KEY, WEBHOOK, SecretWatch, watch
from bridge.sources.webhook import WebhookHandler
from bridge.sources.websocket import WebSocketSource
from bridge.stopbudget import StopBudget, drain_delay_seconds
from bridge.stopsignals import held_stop, stop_signals
from bridge.supervise import Supervisor
from bridge.workers.role import Stages

log = logging.getLogger(__name__)
# Output records are keyed by call (or agent, or org): compaction keeps one per key.
OUTPUT_COMPACTED = (
    "an output topic's cleanup.policy compacts: it keeps only the last record of each key (one"
    " event per call), and refuses records without a key (dead letters, alerts of no agent or"
    " org), which the dedup stage skips; set it to delete"
)
INGEST_RECREATED = (
    "the ingest topic exists again, without the ids of the events output before it was deleted:"
    " until the dedup TTL has passed, a late copy of one of them (Pinecall's retry, the feed's or"
    " the call log's own copy) is output again"
)
# Made again with another count (deleted and recreated, or auto-created with num.partitions).
OUTPUT_PARTITIONS_CHANGED = (
    "an output topic's partition count changed while running (made again, or partitions added):"
    " a call's key now maps to another partition, so a consumer reading partitions independently"
    " can see a call's later events before its earlier ones; give it its partitions back (they"
    " can only be added), or have consumers order by pinecallseq"
)
LEASE_LEAVE_SECONDS = 1.0  # kept from the feed's share of a stop for leaving the lease's group
# The secrets read again from their files while running; the Kafka passwords are not (the
# clients hold them): a restart takes those.
WEBHOOK_SECRETS = "BRIDGE_WEBHOOK__SECRETS"
API_KEY_FILE = "BRIDGE_PINECALL__API_KEY"
# A probe or scrape under way when the admin port closes, at the very end of a stop: a pod's
# answer takes at most its workers' 1 s (bridge/workers/pod.py).
ADMIN_SHUTDOWN_SECONDS = 1.0
# Kept from the end of a stop's first phase for a webhook waiting on Kafka to be answered (503)
# before its connection is closed: a response written, milliseconds; at most a quarter of it.
ANSWER_SECONDS = 0.5


class OutputTopicMissingError(RuntimeError):
    """A topic the routing names does not exist: the ingest stage waits for it, unready."""


class _Part(Protocol):
    """A part started once Kafka answers (the call-log source, the dedup stage, ...)."""

    async def start(self) -> None: ...


class Bridge:
    """start() returns once HTTP is served; Kafka is connected in the background, with retries."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        probes: list[web.RouteDef] | None = None,
        reuse_port: bool = False,
        stages: Stages = "both",
        pod_processes: int = 1,
        memory_check: bool = True,
        secret_files: Mapping[str, Path] | None = None,
        listen_when_ready: bool = False,
    ) -> None:
        """`probes`, `reuse_port`, `stages`, `pod_processes`, `memory_check` (one worker of
        the pod says the dedup window's fit) and `listen_when_ready` (the webhook port bound only
        once ready): a worker process of a pod (bridge/workers);
        `secret_files`: the files secrets were read from, by variable, to read again on a change
        (`reloaded_secret_files`)."""
        self.settings = settings
        self.stages: Stages = stages
        self._pod_processes = pod_processes
        # The partition count the memory limit was last compared for (0: not yet; -1: never here).
        self._memory_checked = 0 if memory_check and stages != "ingest" else -1
        self._reuse_port = reuse_port
        self._listen_when_ready = listen_when_ready
        self.metrics = metrics if metrics is not None else Metrics()
        # Set when a task crashed too often to be restarted, or the webhook port bound once ready
        # could not be (`listen_failed`): serve() then exits non-zero.
        self.crashed = asyncio.Event()
        self.listen_failed = False
        self.supervisor = Supervisor(self.metrics, escalate=lambda _task, _exc: self.crashed.set())
        self._ingest_partitions = PartitionWatch(settings.topics.ingest_partitions)
        self._topic_problems = TopicProblems()
        self._topic_watch: asyncio.Task[None] | None = None
        self.sink = KafkaSink(
            settings.kafka, self.metrics, self.supervisor, after_probe=self._watch_ingest_topic
        )
        self.metrics.ingest_partitions.set_function(
            lambda: self.sink.partition_count(settings.topics.ingest)
        )
        self.router = Router(settings.topics, settings.routing.rules)
        # Each output topic's partition count, followed by the topic check as the ingest topic's
        # is by the metadata probe: one recreated (or auto-created) with another moves calls'
        # keys to other partitions.
        self._output_partitions = {
            name: PartitionWatch(None, OUTPUT_PARTITIONS_CHANGED)
            for name in self.router.topics()
            if name != settings.topics.ingest
        }
        # Flow counters exist at 0 from the start: alerts compare their increase(), and a series
        # born with its first events shows no increase until the next ones.
        for channel in get_args(Channel):
            self.metrics.ingested_by(channel)
            self.metrics.duplicates_by(channel)
        for topic in self.router.topics():
            self.metrics.published_by(topic)
        # Alerted on by increase(): a change is counted only after a first read, into a series
        # that must exist before it.
        for topic in (settings.topics.ingest, *self.router.topics()):
            self.metrics.topic_partitions_changed.labels(topic)
        # PublishingStalled subtracts these from the events received: an ephemeral event, whose
        # type's series already counts, must not read as received and not ingested.
        for reason in get_args(DropReason):
            self.metrics.dropped.labels(reason)
        # Rates over these are alerted on (PinecallBridgeDeadLettersHigh) and graphed: a series
        # born at its first count shows a rate only from its second scrape on.
        for dead in get_args(UnrecognisedReason):
            self.metrics.dead_lettered.labels(dead)
        for failure in (*get_args(PublishFailure), TOO_LARGE):
            self.metrics.publish_failures.labels(failure)
        # Lazy on purpose: received{channel,type} (3 channels x ~85 known types: hundreds of
        # series at 0 most processes never count), and published{topic} for a topic the routing
        # does not name (a record's own choice, unbounded).
        self.pipeline = pipeline_for(settings, self.sink, self.router, self.metrics)
        client = client_options(settings.kafka)
        dedup = settings.dedup
        self.dedup = (
            DedupStage(
                dedup,
                settings.topics.ingest,
                client,
                self.metrics,
                self.supervisor,
                limits=self.sink.limits,
                output_topics=self.router.topics(),
                metadata_max_age_ms=int(settings.kafka.metadata_probe_seconds * 1000),
                probe_seconds=settings.kafka.metadata_probe_seconds,
                missing_topics=self._topic_problems.missing,
            )
            if stages != "ingest"
            else None
        )
        # The call-log source follows the calls of the ingest partitions the dedup stage owns.
        # Fitted to the open-files limit: past it, followers failing with EMFILE took every
        # descriptor, the admin port's and Kafka's new connections' too. 0 where it does not
        # run (a webhook-only worker): reserved for it, they lowered the connection cap for none.
        follows = settings.sse.enabled and self.dedup is not None
        self.max_calls = self._call_limit() if follows else 0
        self.calllog = (
            CallLogSource(
                settings.sse.model_copy(update={"max_calls": self.max_calls}),
                settings.pinecall,
                settings.kafka,
                settings.topics.ingest,
                self.pipeline,
                self.metrics,
                dedup_ttl_seconds=settings.dedup.ttl_seconds,
                supervisor=self.supervisor,
            )
            if follows
            else None
        )
        if self.dedup is not None:
            self.dedup.listener = self.calllog
        self.hanging = (
            HangingTransactions(
                client,
                self.router.topics(),
                self.metrics,
                self.supervisor,
                every=dedup.hanging_check_seconds,
                report_after=dedup.hanging_report_seconds,
            )
            if self.dedup is not None and dedup.hanging_check_seconds > 0
            else None
        )
        # A process with the ingest path judges its Kafka by the producer's probe too; one
        # running only the dedup stage has none, and goes by its clients' refused connections.
        self.kafka_credentials = CredentialFiles(
            credential_files(settings.kafka, secret_files or {})
        )
        # The refusal a client of an earlier Bridge in this process (a test's) was left with is
        # none of this one's: kept, rotated files would ask a restart before any refusal here.
        AUTHENTICATION.refused = False
        self.readiness = Readiness(
            self.metrics,
            lambda: self.sink.connected,
            clients_alive=lambda: (
                self.sink.alive
                and (self.dedup is None or self.dedup.alive)
                and (self.lease is None or self.lease.alive)
            ),
            credentials_stale=self._stale_credentials,
        )
        self.readiness.listening = not listen_when_ready
        if stages == "dedup":
            # `ready` is /readyz's answer, and the pod's /readyz is its webhook workers': a
            # dedup process's own would make the pod look unready to whoever reads the gauge.
            self.metrics.registry.unregister(self.metrics.ready)
            self.metrics.registry.unregister(self.metrics.listening)
        self.feed: WebSocketSource | None = None
        self.lease = (
            FeedLease(
                settings.topics.feed_lease,
                f"{dedup.group}-feed-lease",
                client,
                self.metrics,
                on_acquired=self._start_feed,
                on_lost=self._stop_feed_now,
                session_timeout_ms=dedup.session_timeout_ms,
                heartbeat_interval_ms=dedup.heartbeat_interval_ms,
                supervisor=self.supervisor,
                reading=lambda: self.feed is not None and self.feed.connected,
                metadata_max_age_ms=int(settings.kafka.metadata_probe_seconds * 1000),
            )
            if settings.websocket.enabled and stages != "dedup"
            else None
        )
        webhook = WebhookHandler(
            settings.webhook,
            self.pipeline,
            self.metrics,
            body_timeout_seconds=settings.http.body_timeout_seconds,
        )
        self.app = build_app(settings, webhook, self.readiness, self.metrics, probes)
        self.admin_app = (
            build_admin_app(
                probes if probes is not None else probe_routes(self.readiness, self.metrics)
            )
            if settings.http.admin_port is not None
            else None
        )
        self._secrets_watching: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._started = False
        self._connector: asyncio.Task[None] | None = None
        self._registration: asyncio.Task[None] | None = None
        self.registrar: Registrar | None = None
        api = settings.pinecall
        if api.register_webhook and self.stages != "dedup":
            url = f"{api.public_url}{settings.webhook.path}"
            self.registrar = Registrar(
                api, url, lambda: webhook.settings.signing_secret, self.metrics
            )
        files = secret_files or {}
        self.secret_watches: list[SecretWatch[Any]] = []
        if (path := files.get(WEBHOOK_SECRETS)) is not None and stages != "dedup":
            self.secret_watches.append(
                SecretWatch(WEBHOOK, path, lambda: webhook.settings, webhook.use, self.metrics)
            )
        uses_key = any(part is not None for part in (self.calllog, self.lease, self.registrar))
        if (path := files.get(API_KEY_FILE)) is not None and uses_key:
            self.secret_watches.append(
                SecretWatch(API_KEY, path, lambda: api, self._use_api_key, self.metrics)
            )
        self._loop_lag: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.admin_port: int | None = None

    async def start(self) -> None:
        if self._started:
            return
        if self.stages != "dedup":
            if not self._listen_when_ready:
                await self._start_http()
            elif self.admin_app is not None and self.settings.http.admin_port is not None:
                # Probes and metrics only, answered for the pod: no webhook answered 503 here.
                await self._start_admin(self.settings.http.admin_port)
        self._started = True
        self._connector = self.supervisor.spawn("kafka-connect", self._connect)
        self._loop_lag = asyncio.create_task(
            looplag.watch(self.metrics.event_loop_lag.observe), name="loop-lag"
        )
        if self.registrar is not None:
            self._registration = self.supervisor.spawn("webhook-register", self.registrar.run)
        every = self.settings.webhook.secrets_check_seconds
        if self.secret_watches and every > 0:
            watches = self.secret_watches
            self._secrets_watching = self.supervisor.spawn(
                "secret-files", lambda: watch(watches, every)
            )

    def _stale_credentials(self) -> bool:
        """Kafka unanswered, or refusing a client's last connection (the dedup stage's, after a
        rebalance) its credentials, while their files changed since start: a restart cures it.

        Answering, though unready (the ingest topic below min.insync.replicas), it takes them."""
        # A dedup process's producer is never probed: its unanswered says nothing.
        answering = self.stages == "dedup" or self.sink.connected or self.sink.answering
        return self.kafka_credentials.restart_needed(
            answering or not self._started, refused=self._started and AUTHENTICATION.refused
        )

    def _use_api_key(self, fresh: PinecallSettings) -> None:
        """Every source reads the key from the one shared section at each request: swap it
        there, and cut short the waits after a refusal, the new key being the likely cure."""
        self.settings.pinecall.api_key = fresh.api_key
        if self.calllog is not None:
            self.calllog.key_changed()
        if self.feed is not None:
            self.feed.key_changed()

    async def _start_http(self) -> None:
        http = self.settings.http
        runner = webhook_runner(
            self.app, self.settings, self.metrics, max_connections=self._connection_limit()
        )
        await runner.setup()
        try:
            await listen.start(runner, http.host, http.port, reuse_port=self._reuse_port)
        except BaseException:
            # Not yet the bridge's to stop: its server and the app's cleanup would be left over.
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if self.admin_app is not None and http.admin_port is not None and not self._admin_runner:
            await self._start_admin(http.admin_port)
        parser, why_not_c = request_parser()
        log.info(
            "listening",
            extra={
                "host": http.host,
                "port": self.port,
                "path": self.settings.webhook.path,
                "admin_port": self.admin_port,
                "http_parser": parser,
            },
        )
        if why_not_c is not None:
            log.warning(NOT_LLHTTP, extra={"http_parser": parser, "reason": why_not_c})
        if not self.settings.webhook.secrets:
            log.warning("WEBHOOK SIGNATURES ARE NOT CHECKED (allow_unsigned): anyone can publish")

    async def _start_admin(self, port: int) -> None:
        """The admin port, shared by the pod's workers as the webhook port is (SO_REUSEPORT)."""
        assert self.admin_app is not None
        runner = admin_runner(
            self.admin_app,
            self.settings.http,
            self.metrics,
            handle_signals=False,
            access_log=None,
            # Closed last (see stop): only a scrape or probe under way, at most a pod's answer.
            shutdown_timeout=ADMIN_SHUTDOWN_SECONDS,
        )
        await runner.setup()
        try:
            await listen.start(runner, self.settings.http.host, port, reuse_port=self._reuse_port)
        except BaseException:
            await runner.cleanup()
            await self._stop_http()  # the webhook port too: the process will not serve
            self._runner = None
            raise
        self._admin_runner = runner
        self.admin_port = int(runner.addresses[0][1])

    def _connection_limit(self) -> int:
        """BRIDGE_HTTP__MAX_CONNECTIONS, lowered (and said) if the open-files limit is too low."""
        wanted = self.settings.http.max_connections
        open_files = connlimit.open_files_limit()
        reserved = self._admin_fds() + self.max_calls
        limit = connlimit.fitted_limit(wanted, open_files, reserved)
        if limit < wanted:
            log.warning(
                "BRIDGE_HTTP__MAX_CONNECTIONS lowered to fit the open-files limit (ulimit -n)",
                extra={
                    "max_connections": limit,
                    "setting": wanted,
                    "open_files_limit": open_files,
                    "reserved": reserved + connlimit.REFUSING_MAX,
                },
            )
        return limit

    def _admin_fds(self) -> int:
        """Descriptors kept for the rest of the process (its gap pages and restores set above
        their defaults too) and the admin port, where this process serves it."""
        sse, here = self.settings.sse, self.dedup is not None
        reserved = connlimit.RESERVED_FDS + connlimit.beyond_reserved(
            # The call-log source runs only beside the dedup stage (its calls are the partitions').
            sse.max_gap_pages_in_flight if here and sse.enabled else 0,
            self.settings.dedup.restore_concurrency if here else 0,
            len(set(self.settings.kafka.bootstrap_servers)),
        )
        # A dedup-only process serves no port (start): its probes come on its unix socket.
        if self.settings.http.admin_port is not None and self.stages != "dedup":
            reserved += connlimit.ADMIN_MAX_CONNECTIONS + connlimit.REFUSING_MAX
        return reserved

    def _call_limit(self) -> int:
        """BRIDGE_SSE__MAX_CALLS, lowered (and said) so the followers leave the rest of the process
        and the ports it serves (the admin port; the webhook port its cap, or at least half of
        what the two share, with its refusals) under the open-files limit."""
        sse = self.settings.sse
        open_files = connlimit.open_files_limit()
        serves = self.stages != "dedup"
        # A dedup-only process has no webhook connections, nor refusals, to leave room for.
        connections = self.settings.http.max_connections if serves else 0
        reserved = self._admin_fds()
        refusing = connlimit.REFUSING_MAX if serves else 0
        limit = connlimit.fitted_calls(sse.max_calls, connections, open_files, reserved, refusing)
        if limit < sse.max_calls:
            assert open_files is not None  # unlimited, nothing is lowered
            # The cap _connection_limit will set (at least 1): under a limit smaller than the
            # reserve, what is left is negative, and this line said "leaving -65 connections".
            left = connlimit.fitted_limit(connections, open_files, reserved + limit, refusing)
            port = (
                f"leaving {left} webhook connections of BRIDGE_HTTP__MAX_CONNECTIONS {connections} "
                if serves
                else ""  # a dedup-only process serves no port
            )
            log.warning(
                "BRIDGE_SSE__MAX_CALLS lowered to fit the open-files limit (ulimit -n):"
                f" {limit} of {sse.max_calls} calls followed at once (the rest wait in the"
                f" queue), {port}under the limit of {open_files}; raise the container's"
                " open-files limit or lower BRIDGE_SSE__MAX_CALLS",
                extra={
                    "max_calls": limit,
                    "setting": sse.max_calls,
                    "open_files_limit": open_files,
                    "reserved": reserved + refusing,
                    "webhook_connections": left if serves else 0,
                },
            )
        return limit

    def topic_specs(self) -> list[TopicSpec]:
        """Every topic the bridge uses: outputs, the ingest topic and the feed lease topic."""
        t, dedup = self.settings.topics, self.settings.dedup
        ingest = TopicSpec(
            t.ingest,
            t.ingest_partitions,
            {
                # Restore replays by append time, which only the broker's clock makes monotonic.
                "message.timestamp.type": "LogAppendTime",
                "retention.ms": str(dedup.ingest_retention_ms()),
                "cleanup.policy": "delete",
            },
        )
        lease = TopicSpec(t.feed_lease, 1)
        return [*(TopicSpec(name) for name in self.router.topics()), ingest, lease]

    async def _connect(self) -> None:
        """Connect the ingest path, then start the rest beside it, each retried until it works.

        A webhook needs only the ingest path, so a process that serves the port is ready once it
        works: a dedup stage, call-log source or lease that cannot start yet (a missing ACL, a
        coordinator away) leaves events waiting in the ingest topic, not refused at the door.
        """
        # A port that never answers (no Kafka listener, a TLS mismatch) is only reported after
        # the connect timeout: until then this line says what is being waited for.
        k = self.settings.kafka
        log.info(
            "connecting to Kafka",
            extra={
                "bootstrap_servers": ",".join(k.bootstrap_servers),
                "security_protocol": k.security_protocol,
                "request_timeout_ms": k.request_timeout_ms,
                "connect_timeout_ms": k.connect_timeout_ms,
            },
        )
        await self._retry(
            "Kafka not ready yet (unreachable, refused our credentials or TLS, or a topic is"
            " missing); retrying",
            self._connect_ingest,
            self.sink.stop,
        )
        if self.stages != "dedup":
            if self._listen_when_ready and self._runner is None:
                # Not before: the kernel hands a bound port's share of new connections to this
                # process, each answered 503 until now, while other workers of the pod serve.
                try:
                    await self._start_http()
                except OSError as exc:
                    # As a first start's failed bind: one line and exit 1 (the pod's supervisor
                    # restarts the worker, within its budget), not a crashed task that connects
                    # Kafka again and again, a traceback each time, until it escalates.
                    cannot_listen(self.settings, exc)
                    self.listen_failed = True
                    self.crashed.set()
                    return
                self.readiness.listening = True
            self._ready()
        if self.dedup is not None and self.settings.dedup.topic_check_seconds > 0:
            self._topic_watch = self.supervisor.spawn("topic-watch", self._watch_topics)
        await self._start_parts()

    async def _connect_ingest(self) -> None:
        await self.sink.start()
        fresh: set[str] = set()
        if self.settings.topics.create:
            fresh = await self.sink.ensure_topics(self.settings.topics, self.topic_specs())
        names = [self.settings.topics.ingest, *self.router.topics()]
        # The dedup stage's config checks ride on the limits' DescribeConfigs request, and so
        # does the ingest topic's min.insync.replicas that readiness judges writes by.
        configs = await self.sink.learn_limits(
            names,
            (MIN_INSYNC_REPLICAS, *(CONFIG_KEYS if self.dedup is not None else ())),
            fresh,
            writes=[self.settings.topics.ingest],
        )
        ingest = self.settings.topics.ingest
        insync = None if configs is None else configs.found.get(ingest, {}).get(MIN_INSYNC_REPLICAS)
        self.sink.watch_writes(ingest, int(insync) if insync and insync.isdigit() else None)
        await self.sink.warm([ingest])
        self._watch_ingest_topic()
        if self.dedup is not None:
            layouts = None if configs is None else await self._topic_layouts(names, fresh)
            self._check_configs(names, configs, fresh, layouts)
        if self.stages != "dedup" and configs is not None:
            self._outputs_exist(configs.errors)

    def _outputs_exist(self, errors: Mapping[str, int]) -> None:
        """Raise (unready, retried) while a topic the routing names is missing: a pod whose routing
        lacks it (an old one, mid-rollout) would skip records naming it, answered 2xx, lost."""
        missing = [
            name
            for name in self.router.topics()
            if errors.get(name) == UnknownTopicOrPartitionError.errno
        ]
        if missing:
            raise OutputTopicMissingError(
                f"output topics missing (created by none, or not yet): {', '.join(missing)}"
            )

    async def _start_parts(self) -> None:
        """Start every part, each retried on its own: one that cannot start holds up no other.

        A dedup stage refused its transactional id must not keep the feed lease from starting,
        or the feed's events are lost meanwhile. Each start is idempotent and undoes itself when
        it fails, so a retry resumes.
        """
        # The stage is all a dedup process does: it is ready once the stage runs.
        staged = self._ready if self.stages == "dedup" else None
        await asyncio.gather(
            # The call log first: ready for the stage's first assignment.
            self._start_chain([("call_log", self.calllog), ("dedup_stage", self.dedup)], staged),
            self._start_chain([("hanging_watch", self.hanging)]),
            self._start_chain([("feed_lease", self.lease)]),
        )

    async def _start_chain(
        self, chain: list[tuple[str, _Part | None]], then: Callable[[], None] | None = None
    ) -> None:
        for name, part in chain:
            if part is not None:
                await self._retry(
                    "a part of the bridge could not start; retrying (webhooks are still taken:"
                    " their events wait in the ingest topic)",
                    part.start,
                    part=name,
                )
        if then is not None:
            then()

    async def _retry(
        self,
        failed: str,
        attempt: Callable[[], Awaitable[None]],
        undo: Callable[[], Awaitable[None]] | None = None,
        *,
        part: str | None = None,
    ) -> None:
        delay = 0.5
        while True:
            try:
                await attempt()
                return
            except Exception as exc:
                if undo is not None:
                    await undo()
                # Full jitter, drawn first so the line says the wait actually taken.
                wait = random.uniform(0, delay)
                log.warning(
                    failed,
                    extra={
                        **({"part": part} if part is not None else {}),
                        "error": repr(exc)[:500],
                        "retry_in_s": round(wait, 1),
                        "bootstrap_servers": ",".join(self.settings.kafka.bootstrap_servers),
                    },
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, 30.0)

    def _ready(self) -> None:
        self.readiness.started = True
        log.info(
            "ready",
            extra={
                "topics": self.router.topics(),
                "ingest": self.settings.topics.ingest,
                "stages": self.stages,
            },
        )

    def _watch_ingest_topic(self) -> None:
        """Log a partition count that differs from the settings, or that changed."""
        count = self.sink.partition_count(self.settings.topics.ingest)
        self._say_partitions(self.settings.topics.ingest, self._ingest_partitions.observe(count))
        if count > 0 and self._memory_checked not in (-1, count):
            self._memory_checked = count
            self._check_memory(count, read_limit())
            self._check_idle_workers(count)

    def _check_idle_workers(self, partitions: int) -> None:
        """Warn when the pod runs more dedup stages than the ingest topic has partitions."""
        # Each worker runs one unless the pod has a dedup process (then this one, stages "dedup").
        members = self._pod_processes if self.stages == "both" else 1
        if members > partitions:
            log.warning(
                f"{members} of this pod's workers run the dedup stage and the ingest topic has"
                f" {partitions} partitions: at least {members - partitions} of them own none"
                " (idle, and more across replicas); give the topic more partitions, or set"
                " BRIDGE_DEDUP__OWN_PROCESS",
                extra={
                    "topic": self.settings.topics.ingest,
                    "partitions": partitions,
                    "dedup_workers": members,
                },
            )

    def _check_memory(self, partitions: int, limit: MemoryLimit) -> None:
        """Warn when one pod owning all `partitions` would outgrow the container's memory."""
        if limit.problem is not None:
            log.warning(
                "could not read the container's memory limit to size the dedup window against",
                extra={"file": limit.source, "error": limit.problem},
            )
            return
        fit = WindowFit(
            partitions,
            self.settings.dedup.max_entries_per_partition,
            limit.limit,
            self._pod_processes,
            self.settings.dedup.restore_concurrency,
        )
        facts = {
            "partitions": partitions,
            "max_entries_per_partition": fit.max_entries,
            "worst_case_bytes": fit.worst_case,
            "needed_bytes": fit.needed,
            "memory_limit_bytes": fit.limit,
        }
        warning = fit.warning()
        if warning is not None:
            log.warning(warning, extra={**facts, "largest_cap": fit.largest_cap()})
        else:
            log.info(fit.summary(), extra=facts)

    def _check_configs(
        self,
        names: list[str],
        configs: TopicConfigs | None,
        fresh: set[str],
        layouts: TopicReads[Layout] | None = None,
    ) -> None:
        """The start's topic check: what the checks while running say, worded for the start
        (`layouts` None: the topics' replication factors could not be read)."""
        if configs is None:
            log.warning(
                "could not read the topics' configs to check them",
                extra={"topic": self.settings.topics.ingest},
            )
            return
        # Just created by the bridge, so not missing: its metadata is late to reach a broker.
        late = not_yet_visible(configs.errors, fresh)
        for name, why, error_code in unread(late, configs.found, configs.errors, fresh):
            log.warning(
                f"could not read a topic's configs to check them: {why}",
                extra={"topic": name, "error_code": error_code},
            )
        checked = [name for name in names if name not in late]
        unread_as = "could not read a topic's configs to check them"
        problems = self._topic_problems_in(checked, configs, fresh, unread_as)
        if layouts is not None:
            problems += self._check_durability(configs.found, layouts, fresh)
            self._watch_output_partitions(layouts)
        self._say_topic_problems(problems, missing=configs.errors)

    async def _watch_topics(self) -> None:
        """Read the topics' configs again every topic_check_seconds: an admin may shorten the
        ingest topic's retention, or delete a topic, while the bridge runs."""
        names = [self.settings.topics.ingest, *self.router.topics()]
        options = client_options(self.settings.kafka)
        while True:
            await asyncio.sleep(self.settings.dedup.topic_check_seconds)
            try:
                # A topic deleted and made again (by an admin, or by the cluster at the stage's
                # next send) may have another replication factor, min.insync.replicas or
                # partition count than the one the start checked.
                # One admin client for both: a connection (TLS, SASL) per check, not two.
                configs, layouts = await topic_configs_and_layouts(
                    options, names, (MIN_INSYNC_REPLICAS, *CONFIG_KEYS)
                )
            except (KafkaError, OSError, TimeoutError):
                continue  # unreachable: the probe says so (kafka_connected)
            self.sink.learn_cleanup(configs.found)
            # Readiness judges the ingest topic's writes by it: the start's value would judge a
            # topic made again with another (ready while every write is refused, or not ready).
            self.sink.learn_min_insync(configs.found)
            unread_as = "a topic of the bridge's cannot be read while running"
            problems = self._topic_problems_in(names, configs, set(), unread_as)
            problems += self._durability_problems(configs.found, layouts)
            self._watch_output_partitions(layouts)
            self._say_topic_problems(problems, missing=configs.errors)

    def _watch_output_partitions(self, layouts: TopicReads[Layout]) -> None:
        """Log (ERROR) and count an output topic whose partition count differs from the last
        read."""
        for name, layout in layouts.found.items():
            watch = self._output_partitions.get(name)  # the ingest topic's is the probe's
            if watch is not None:
                self._say_partitions(name, watch.observe(layout.partitions))

    def _say_partitions(self, topic: str, found: Finding | None) -> None:
        """Log what a PartitionWatch of `topic` found, counting a change while running."""
        if found is None:
            return
        if found.changed:
            self.metrics.topic_partitions_changed.labels(topic).inc()
        log.log(found.level, found.message, extra={"topic": topic, **found.facts})

    def _topic_problems_in(
        self, names: list[str], configs: TopicConfigs, fresh: set[str], unread_as: str
    ) -> list[Problem]:
        """Each of `names` whose configs were not read, then what in the ingest topic's configs
        lets a restore miss ids (one made elsewhere, or changed by an admin)."""
        problems = [
            Problem(name, unread_kind(error_code), f"{unread_as}: {why}")
            for name, why, error_code in unread(names, configs.found, configs.errors, fresh)
        ]
        ingest = self.settings.topics.ingest
        if ingest in configs.found:
            findings = ingest_topic_findings(configs.found[ingest], self.settings.dedup)
            problems += [Problem(ingest, kind, message) for kind, message in findings]
        problems += [
            Problem(name, "compacted", OUTPUT_COMPACTED)
            for name in names
            if name != ingest and compacts(configs.found.get(name, {}).get(CLEANUP_POLICY, ""))
        ]
        return problems

    def _say_topic_problems(self, problems: list[Problem], missing: dict[str, int]) -> None:
        """Log each problem not present before (ERROR), and each present before and gone
        (INFO); set its `topic_problem` series to 1, then 0 once gone."""
        new, gone = self._topic_problems.observe(problems)
        for found in new:
            self.metrics.topic_problem.labels(found.topic, found.kind).set(1)
            message = found.message
            if missing.get(found.topic) in NOT_YET_VISIBLE:
                message += (
                    ": webhooks and feed events are answered 503 until it exists again"
                    if found.topic == self.settings.topics.ingest
                    else ": its events wait in the ingest topic until it exists again"
                )
            log.log(found.level, message, extra={"topic": found.topic, **found.facts})
        for fixed in gone:
            self.metrics.topic_problem.labels(fixed.topic, fixed.kind).set(0)
            log.info(
                "a topic's problem is gone", extra={"topic": fixed.topic, "problem": fixed.message}
            )
            if fixed.topic == self.settings.topics.ingest and fixed.kind == "missing":
                # The ingest topic is the dedup stage's memory: a restore reads the ids back from
                # it, and the new one holds none of those output before the deletion.
                log.warning(INGEST_RECREATED, extra={"topic": fixed.topic})

    async def _topic_layouts(self, names: list[str], fresh: set[str]) -> TopicReads[Layout] | None:
        try:
            return await topic_layouts(client_options(self.settings.kafka), names, fresh)
        except KafkaError as exc:
            log.warning(
                "could not read the topics' replication factors to check their durability",
                extra={"error": type(exc).__name__},
            )
            return None

    def _check_durability(
        self, configs: dict[str, dict[str, str]], layouts: TopicReads[Layout], fresh: set[str]
    ) -> list[Problem]:
        """Log each topic whose replication factor could not be read; the start's
        _durability_problems."""
        # A topic whose configs were not read is said by _check_configs already.
        for name, why, error_code in unread(
            list(configs), layouts.found, layouts.errors, fresh, right="Describe"
        ):
            log.warning(
                f"could not read a topic's replication factor to check its durability: {why}",
                extra={"topic": name, "error_code": error_code},
            )
        return self._durability_problems(configs, layouts)

    def _durability_problems(
        self, configs: dict[str, dict[str, str]], layouts: TopicReads[Layout]
    ) -> list[Problem]:
        """Each topic made elsewhere (Strimzi, an admin, the cluster's auto-creation) whose
        acknowledged records one broker's loss can take, or that refuses every write."""
        problems: list[Problem] = []
        for name, layout in layouts.found.items():
            insync = configs.get(name, {}).get(MIN_INSYNC_REPLICAS)
            found = durability_problem(layout.factor, insync)
            if found is not None:
                level, message, kind = found
                facts = {"replication_factor": layout.factor, "min_insync_replicas": insync}
                problems.append(Problem(name, kind, message, level, facts))
        return problems

    async def _start_feed(self) -> None:
        if self.feed is None:
            self.feed = WebSocketSource(
                self.settings.websocket,
                self.settings.pinecall,
                self.pipeline,
                self.metrics,
                self.supervisor,
                on_connected=self.lease.connected if self.lease is not None else None,
            )
            await self.feed.start()

    async def _stop_feed_now(self) -> None:
        """The lease is gone: stop reading, and give what was read a short while to reach Kafka."""
        feed, self.feed = self.feed, None
        if feed is not None:
            await feed.stop(asyncio.get_running_loop().time() + 5.0, lease_held=False)

    async def _stop_http(self) -> None:
        if self._runner is None:
            return
        # Close the listeners first and let accepted connections reach their handlers: a handler
        # that starts after aiohttp's cleanup began can wait out the whole shutdown timeout.
        for site in list(self._runner.sites):
            await site.stop()
        if self._reuse_port:
            # A pod's worker: the kernel hands the port's new connections to the other workers
            # now, so its stop (the flush, the dedup stage's drain) must not unready the pod.
            # A single process's stop is the pod's: it stays `stopping`.
            self.readiness.listening = False
        for _ in range(3):
            await asyncio.sleep(0)
        await self._runner.cleanup()

    async def _stop_feed(self, deadline: float) -> None:
        """Stop the feed, then hand its lease on, both by `deadline` (loop time)."""
        feed, self.feed = self.feed, None
        read_until: float | None = None
        if feed is not None:
            by = deadline
            if self.lease is not None:
                # A feed using its whole share (Kafka slow) left no time to leave the group: the
                # leave was cut, and nobody read the feed until the session timeout.
                by -= lease_leave_reserve(deadline - asyncio.get_running_loop().time())
            await feed.stop(by)
            read_until = feed.disconnected_at
        if self.lease is not None:
            # Only now, with the backlog published or given up: a replica taking over earlier
            # could publish a call's later events before this one's earlier ones. Leaving the
            # group hands the lease on without a session timeout.
            try:
                # Its own bound: Kafka down, the leave never ends, and a feed's stop that overran
                # its deadline must not leave it unbounded.
                async with asyncio.timeout_at(deadline):
                    await self.lease.stop(read_until, by=deadline)
            except TimeoutError:
                log.error(
                    "the feed lease was not handed on in time: the next holder waits out"
                    " BRIDGE_DEDUP__SESSION_TIMEOUT_MS"
                )

    async def _stop_calllog(self, deadline: float) -> None:
        """Stop following calls; entries being published may land until `deadline`."""
        if self.calllog is not None:
            await self.calllog.stop(deadline)

    async def stop(self, by: float | None = None) -> None:
        """Unready at once; let requests in flight finish; flush the producer; all within grace.

        `by` (loop time): a deadline set by whoever stops this process, if sooner than the grace.
        """
        self.readiness.stopping = True
        self.readiness.ready()
        now = asyncio.get_running_loop().time()
        budget = StopBudget.plan(now, self.settings.shutdown.grace_seconds, by)
        # The listener's close is cut at the end of phase one: a webhook still waiting on Kafka
        # then would be cut unanswered when the process exits, its events maybe stored.
        self.pipeline.answer_by(budget.inputs_by - answer_reserve(budget.inputs_by - now))
        log.info(
            "shutting down",
            extra={
                "grace_s": round(budget.deadline - now, 3),
                "stages_s": round(budget.stages_by - now, 3),
            },
        )
        for task in (
            self._connector,
            self._topic_watch,
            self._registration,
            self._secrets_watching,
            self._loop_lag,
        ):
            if task is not None:
                await cancel_and_wait(task)
        if self.hanging is not None:
            await self.hanging.stop()
        # The flush keeps a share of the grace period whatever phase one does, and every stage
        # ends before the grace period does: a Kafka client's stop cut at its stage's deadline
        # runs on into the reserve left after it (bridge/stopbudget.py).
        flush_from = budget.inputs_by
        # The delay lets load balancers stop sending to a closing port: without one, nobody sends.
        # Cut against the phase planned at the signal (as start-up and `check` warn of it), and
        # counted from the signal (/readyz 503 since), so the tasks closed above spend the delay,
        # not the inputs' closing time, nor warn of a delay at the limit.
        delay = self._drain_delay(flush_from - now)
        try:
            async with asyncio.timeout_at(flush_from):
                await asyncio.sleep(max(now + delay - asyncio.get_running_loop().time(), 0.0))
                # Phase one: stop taking input, let what was taken reach Kafka.
                await asyncio.gather(
                    self._stop_http(), self._stop_feed(flush_from), self._stop_calllog(flush_from)
                )
        except TimeoutError:
            log.error("requests still in flight when the grace period ran short")
        # Phase two: flush the ingest producer; the dedup stage outputs the records of its
        # partitions up to their ends (until the flush's share of the grace period), then
        # commits and leaves the group, so its partitions move on without a session timeout.
        # A flush that cannot finish (a partition without a leader: idempotent batches never
        # expire) keeps to the first half of the final phase, so the stage still has the rest.
        try:
            async with asyncio.timeout_at(budget.flush_by):
                await self.sink.stop()
        except TimeoutError:
            log.error("the ingest producer was not flushed within its share of the grace period")
        except Exception:
            # Its stop failing must not skip the stage's commit and leave, nor the admin port's.
            log.exception("the ingest producer's stop failed")
        try:
            async with asyncio.timeout_at(budget.stages_by):
                if self.dedup is not None:
                    await self.dedup.stop(drain_by=flush_from)
        except TimeoutError:
            log.error("grace period over before the dedup stage committed and left its group")
        self._runner = None
        # Last: the probes and /metrics answered all along (/readyz 503), so the last scrape
        # sees the drain.
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        self._started = False
        # The counts of thinned lines no later line told of (a flood that ended): not lost.
        logthrottle.flush_all()
        log.info("stopped")

    def _drain_delay(self, phase_one: float) -> float:
        """BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS, cut (and said) where it leaves the first phase
        (`phase_one` s) no time to close the inputs; 0 for a process serving no port."""
        wanted = self.settings.shutdown.drain_delay_seconds if self._runner is not None else 0.0
        delay = drain_delay_seconds(wanted, phase_one)
        if delay < wanted:
            log.warning(
                "drain delay cut short: the stop's first phase keeps time to close the listener"
                " and the feed",
                extra={"drain_delay_s": round(delay, 3), "setting": wanted},
            )
        return delay


def webhook_runner(
    app: web.Application,
    settings: Settings,
    metrics: Metrics,
    *,
    max_connections: int | None = None,
) -> HeadTimeoutAppRunner:
    """The webhook port's runner with every server option the bridge serves it with (the unit
    tests' harness serves through it too, so the two cannot drift apart)."""
    return timed_runner(
        app,
        settings.http,
        metrics,
        max_connections=max_connections,
        handle_signals=False,
        access_log=None,
        # The signature covers the raw body, and inflating a gzip bomb (1,000:1) would stall
        # the event loop: encoded bodies stay as they came and are refused (415).
        auto_decompress=False,
        # A handler needs at most the publish timeout; waiting longer only delays the flush.
        shutdown_timeout=min(
            settings.kafka.publish_timeout_seconds + 1, settings.shutdown.grace_seconds
        ),
    )


def answer_reserve(left: float) -> float:
    """The end of a stop's first phase (`left` s) kept for answering the webhooks it released."""
    return min(ANSWER_SECONDS, max(left, 0.0) / 4)


def lease_leave_reserve(left: float) -> float:
    """The end of the feed's share of a stop kept for leaving the lease's group.

    A leave takes milliseconds (a LeaveGroup round trip); a second covers a loaded broker, and a
    short stop keeps most of its time for publishing what the feed read.
    """
    return min(LEASE_LEAVE_SECONDS, max(left, 0.0) / 4)


async def serve(settings: Settings, dotenv: Mapping[str, str | None]) -> None:
    """Run until SIGTERM, SIGINT or SIGHUP (`stop_signals`), then stop gracefully; `dotenv`: the
    `.env` variables the settings were read from (`Loaded.dotenv`)."""
    await run_until_stopped(Bridge(settings, secret_files=reloaded_secret_files(dotenv)))


def reloaded_secret_files(dotenv: Mapping[str, str | None]) -> dict[str, Path]:
    """The files (BRIDGE_SECRETS_DIR) of the secrets read again while running, by variable: the
    webhook secrets and API key to take them, the Kafka passwords to see them rotated. `dotenv`:
    `Loaded.dotenv`, as the settings found BRIDGE_SECRETS_DIR, not `.env` read again."""
    names = (WEBHOOK_SECRETS, API_KEY_FILE, *PASSWORDS)
    files = {name: secret_file(name, os.environ, dotenv) for name in names}
    return {name: path for name, path in files.items() if path is not None}


def cannot_listen(settings: Settings, exc: OSError) -> None:
    """Say plainly, not with a traceback, that a port could not be bound (e.g. it is taken)."""
    log.error(
        "cannot listen (BRIDGE_HTTP__HOST, BRIDGE_HTTP__PORT, BRIDGE_HTTP__ADMIN_PORT)",
        extra={
            "host": settings.http.host,
            "port": settings.http.port,
            "admin_port": settings.http.admin_port,
            "error": str(exc),
        },
    )


def _no_deadline() -> float | None:
    return None


async def run_until_stopped(
    bridge: Bridge, stop_by: Callable[[], float | None] = _no_deadline
) -> None:
    """Start `bridge`, run it until SIGTERM, SIGINT or SIGHUP, then stop it gracefully.

    `stop_by`, asked at the signal: a deadline (loop time) sooner than the grace period, if any.
    """
    settings = bridge.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals():
        loop.add_signal_handler(sig, stop.set)
    if (held := held_stop()) is not None:
        # Came during the start-up, as PID 1: nothing to start for, as the workers' supervisor
        # spawns none. Started, it opened the listener and connected to Kafka only to stop,
        # serving out the drain delay for a pod already deleted.
        log.info("stopped", extra={"signal": held.name, "started": False})
        return
    try:
        await bridge.start()
    except OSError as exc:  # e.g. the port is taken: say so plainly, not with a traceback
        cannot_listen(settings, exc)
        raise SystemExit(1) from None
    stopped, crashed = asyncio.create_task(stop.wait()), asyncio.create_task(bridge.crashed.wait())
    await asyncio.wait({stopped, crashed}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    crashed.cancel()
    await bridge.stop(by=stop_by())
    if bridge.crashed.is_set():
        if bridge.listen_failed:
            raise SystemExit(1)  # said at the time (cannot_listen)
        log.critical("exiting: a task kept crashing (see task_crashes_total and the log above)")
        raise SystemExit(1)
