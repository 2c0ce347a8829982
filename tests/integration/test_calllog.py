"""The call-log source against the simulator's SSE doors and the real broker.

Calls are written into the simulator's logs while bridges follow them; faults (cuts mid-event,
silent connections, gaps, 5xx) are injected in the middle. The proof is the output topic: every
durable entry of every call exactly once, in seq order within the call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest

from bridge import jsoncodec
from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.normalise.shapes import content_id
from bridge.simulator import Simulator
from bridge.simulator.calllog import LogReader
from bridge.simulator.config import SimulatorConfig
from bridge.simulator.frames import event_frame
from bridge.simulator.wire import encode
from bridge.sources.calllog import calllist
from bridge.sources.calllog import roster as roster_module
from bridge.sources.calllog import source as source_module
from bridge.sources.calllog.roster import Start, Takeover, partition_of
from tests.entries import entry
from tests.integration.conftest import (
    SECRET,
    Consumed,
    RunningBridge,
    Topics,
    consume_until,
    read_decided,
)
from tests.integration.replicas import FAST_SSE, Replica, calllog_env, replica_env, total
from tests.metrics import sample
from tests.polling import until
from tests.sockets import free_port

INGESTED = "pinecall_bridge_events_ingested_total"

API_KEY = "sim-api-key"
_seq_types = itertools.cycle(["turn.user", "agent.state", "turn.agent", "tool.call"])


def sim_config(**over: Any) -> SimulatorConfig:
    return SimulatorConfig(api_key=API_KEY, sse_ping_interval=0.5, sse_retry_ms=50, **over)


class Calls:
    """Writes call logs into the simulator, as Pinecall's workers would; knows what is durable."""

    def __init__(self, sim: Simulator, prefix: str) -> None:
        self.sim = sim
        self.prefix = prefix
        self.next_seq: dict[str, int] = {}
        self.durable: dict[str, list[int]] = defaultdict(list)

    def open(self, n: int) -> list[str]:
        calls = [f"{self.prefix}_{i:03d}" for i in range(n)]
        for call in calls:
            self.next_seq[call] = 1
            self.write(call, "call.started", {"direction": "inbound"})
        return calls

    def write(self, call: str, kind: str, data: dict[str, Any], *, ephemeral: bool = False) -> int:
        seq = self.next_seq[call]
        self.next_seq[call] = seq + 1
        self.sim.calllogs.append(
            entry(seq, kind, call=call, ts=time.time(), ephemeral=ephemeral, data=data)
        )
        if not ephemeral:
            self.durable[call].append(seq)
        return seq

    def talk(self, call: str, rng: random.Random) -> None:
        if rng.random() < 0.25:
            self.write(call, "user.transcript", {"text": "…"}, ephemeral=True)
        else:
            self.write(call, next(_seq_types), {"text": f"line {self.next_seq[call]}"})

    def end(self, call: str) -> None:
        self.write(call, "call.ended", {"reason": "hangup"})
        self.write(call, "call.summary", {"summary": "done"})
        self.write(call, "call.score", {"score": 5})

    @property
    def expected(self) -> int:
        return sum(len(seqs) for seqs in self.durable.values())


def by_call(records: list[Consumed]) -> dict[str, list[tuple[int, int, int]]]:
    """Per call: (partition, offset, seq) of each output record, in partition order."""
    found: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for r in records:
        ce = r.json()
        found[ce["subject"]].append((r.partition, r.offset, ce["pinecallseq"]))
    return found


def assert_exactly_once_in_order(calls: Calls, records: list[Consumed]) -> None:
    found = by_call(records)
    assert set(found) == set(calls.durable)
    for call, seqs in calls.durable.items():
        got = sorted(found[call])
        assert len({p for p, _, _ in got}) == 1, f"{call} spread over partitions"
        assert [seq for _, _, seq in got] == seqs, f"{call}: published {got} != durable {seqs}"
    channels = {r.json()["pinecallchannel"] for r in records}
    assert channels == {"sse"}


def seqless_frames(sim: Simulator) -> dict[str, tuple[str, str, str]]:
    """The feed's frames without a seq, as the bridge must publish them: by content id, (subject,
    type, channel); rendered again from the ledger's entries, as the simulator renders them."""
    entries = {(r["call"], r["seq"]): r["entry"] for r in sim.ledger.records}
    frames = {}
    for send in sim.ws_sends:
        if send.shape != "log-entry":
            logged = entries[send.call, send.seq]
            text = event_frame(logged, encode(logged), send.shape)
            frames[content_id(jsoncodec.loads(text))] = (send.call, send.type, "websocket")
    return frames


def has(n: int) -> Callable[[list[Consumed]], bool]:
    return lambda records: len(records) >= n


async def owns_all(handle: RunningBridge, partitions: int = 3, within: float = 60) -> None:
    stage = handle.bridge.dedup
    assert stage is not None
    await until(lambda: len(stage.owned) >= partitions, within, 0.1, "dedup owns its partitions")


async def play(calls: Calls, names: list[str], rounds: int, rng: random.Random) -> None:
    for _ in range(rounds):
        for call in names:
            calls.talk(call, rng)
        await asyncio.sleep(0.01)


async def all_followed(sim: Simulator, names: list[str]) -> None:
    """A fault hits the streams open at that moment: wait until each call has its one again."""
    await until(lambda: followed_once(sim, names), 60, 0.01, "every call's stream open")


async def through_a_gap(
    sim: Simulator, handle: RunningBridge, calls: Calls, names: list[str], rng: random.Random
) -> None:
    """Force gaps on the open streams and write on until the bridge has read one from the pages;
    forced again once none of the streams it was forced on is open any more."""
    forced: set[LogReader] = set()

    async def filled() -> bool:
        nonlocal forced
        if all(
            sample(handle.metrics, f"pinecall_bridge_sse_{name}_total") > 0
            for name in ("gaps_filled", "gap_entries")
        ):
            return True
        # Only a follower that reads the marker before its stream ends has a gap to fill: one cut
        # while it publishes what came first loses what aiohttp had buffered, marker included,
        # and resumes from Kafka with nothing to fill.
        if not forced & set(sim.calllogs.readers()):
            forced = set(sim.calllogs.readers())
            sim.sse_gap(entries=4)  # readers lose what they hold and the next 4
        await play(calls, names, 1, rng)
        return False

    await until(filled, 60, 0.01, "a forced gap read from the pages")


async def following(
    start_bridge: Callable[..., Any], sim: Simulator, sse: dict[str, Any] = FAST_SSE
) -> RunningBridge:
    """A bridge on the simulator that owns its partitions and reads the org feed."""
    handle: RunningBridge = await start_bridge(
        pinecall={"api_url": sim.url, "api_key": API_KEY}, sse=sse
    )
    await owns_all(handle)
    async with asyncio.timeout(20):
        await sim.calllogs.wait_for_feed_readers(1)
    return handle


async def end_and_check(
    kafka_bootstrap: str, topics: Topics, calls: Calls, names: list[str]
) -> None:
    """Ends the calls, then checks every durable entry was published once, in order."""
    for call in names:
        calls.end(call)
    await consume_until(kafka_bootstrap, [topics.events], has(calls.expected), within=90)
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert_exactly_once_in_order(calls, records)


async def test_many_calls_through_cuts_silences_gaps_and_5xx(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    rng = random.Random(10)
    async with Simulator(sim_config(sse_reader_buffer=8)) as sim:
        handle = await following(start_bridge, sim)
        calls = Calls(sim, "CA_many")
        names = calls.open(40)
        await play(calls, names, 10, rng)
        await all_followed(sim, names)
        sim.sse_cut()  # mid-event: half an event, then the TCP stream aborted
        await play(calls, names, 10, rng)
        await all_followed(sim, names)
        await through_a_gap(sim, handle, calls, names, rng)
        await play(calls, names, 10, rng)
        await all_followed(sim, names)
        reconnects = "pinecall_bridge_sse_reconnects_total"

        def server_errors() -> float:
            return sample(handle.metrics, reconnects, stream="call", reason="server_error")

        # Only on streams: gap pages, asked for at once where reconnects wait their backoff, took
        # them when on any request (as gap_fill_failed). The cut makes all 40 calls reconnect, so
        # the first 5 of those requests are answered 503, however the requests interleave.
        sim.sse_fail(5, on="stream")
        sim.sse_cut()
        await play(calls, names, 10, rng)
        await until(lambda: server_errors() >= 5, 60, 0.01, "the 503s counted as server_error")
        await all_followed(sim, names)
        assert server_errors() == sim.stats.sse_errors_injected == 5
        sim.sse_silence()  # no byte, not even a ping: only the read timeout notices
        await play(calls, names, 10, rng)
        await end_and_check(kafka_bootstrap, topics, calls, names)
        for name in ("gaps", "gaps_filled", "gap_entries"):
            assert sample(handle.metrics, f"pinecall_bridge_sse_{name}_total") > 0, name
        for reason in ("closed", "silent"):
            assert sample(handle.metrics, reconnects, stream="call", reason=reason) > 0, reason


async def test_a_refused_key_is_backed_off_counted_and_recovered_from(
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(14)
    caplog.set_level(logging.ERROR, logger="bridge.sources.calllog.keygate")
    refusing = 3.0
    # Refused for longer than the give-up time: a refused key must not give calls up.
    sse = {**FAST_SSE, "give_up_after_seconds": 1.0}
    async with Simulator(sim_config()) as sim:
        handle = await following(start_bridge, sim, sse)
        calls = Calls(sim, "CA_auth")
        names = calls.open(40)
        await play(calls, names, 5, rng)
        await all_followed(sim, names)
        sim.sse_refuse_auth(refusing)  # every request, the feed's too, is answered 401 meanwhile
        # A gap on one open stream: its first page is refused, and that opens the key gate.
        assert sim.sse_gap(names[0], entries=4) == 1
        await play(calls, names, 5, rng)
        await until(lambda: openings(caplog), 10, 0.01, "the key gate opened by a gap page")
        assert sim.stats.sse_log_auth_refused == sim.stats.sse_page_auth_refused == 1
        # Then a gap on every other stream: each follower leaves it without asking for a page.
        gaps = sample(handle.metrics, "pinecall_bridge_sse_gaps_total")
        assert sim.sse_gap(entries=4) >= len(names) - 1

        def every_gap_read() -> bool:
            read = sample(handle.metrics, "pinecall_bridge_sse_gaps_total") - gaps
            return read >= len(names) - 1

        await play(calls, names, 5, rng)
        await until(every_gap_read, 10, 0.01, "the other streams' gaps read")
        assert sim.stats.sse_page_auth_refused == 1
        assert sim.sse_cut() > 0  # the org feed's stream: its reconnects are refused too
        await play(calls, names, 5, rng)
        await asyncio.sleep(refusing)
        refused = sim.stats.sse_auth_refused
        log_refused = sim.stats.sse_log_auth_refused
        await end_and_check(kafka_bootstrap, topics, calls, names)
        for stream in ("call", "org_feed"):
            auth = sample(
                handle.metrics, "pinecall_bridge_sse_reconnects_total", stream=stream, reason="auth"
            )
            assert auth > 0, stream
        given_up = sample(
            handle.metrics, "pinecall_bridge_sse_calls_given_up_total", reason="refused"
        )
        assert given_up == 0
    # Backed off, not hammered: the org feed and the call list retried a 401 at most every
    # BACKOFF_MAX_SECONDS (0.5 s) or so; a tight loop would make thousands of requests.
    assert 0 < refused <= log_refused + 2 * (refusing / FAST_SSE["backoff_max_seconds"] + 2)
    # The call logs together, gap pages and streams: each follower's request out when the key
    # was refused, then one probe per backoff; each on its own would make one per follower per
    # backoff (~280 here).
    probes = refusing / FAST_SSE["backoff_max_seconds"] + 2
    assert 0 < log_refused <= len(names) + probes, log_refused
    assert len(openings(caplog)) == 1


async def test_a_gap_page_answered_200_but_cut_short_is_counted_and_read_again(
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A page whose body is no page says the key was taken: no key refusal, no wait at the gate;
    # the gap is counted as not filled, and the stream's replay brings what it skipped.
    rng = random.Random(16)
    caplog.set_level(logging.WARNING, logger="bridge.sources.calllog")
    async with Simulator(sim_config()) as sim:
        handle = await following(start_bridge, sim)
        calls = Calls(sim, "CA_cut_page")
        names = calls.open(5)
        await play(calls, names, 5, rng)
        await all_followed(sim, names)
        sim.sse_break_pages(1)
        assert sim.sse_gap(names[0], entries=4) == 1

        def fill_failed() -> float:
            return sample(
                handle.metrics,
                "pinecall_bridge_sse_reconnects_total",
                stream="call",
                reason="gap_fill_failed",
            )

        async def failed() -> bool:
            await play(calls, names, 1, rng)  # the marker comes after the entries it skips
            return fill_failed() > 0

        await until(failed, 30, 0.01, "the gap's page read cut short")
        assert sim.stats.log_pages_broken == 1
        assert "call log gap not read" in caplog.text
        await play(calls, names, 5, rng)
        await end_and_check(kafka_bootstrap, topics, calls, names)
        assert fill_failed() == 1
        auth = sample(
            handle.metrics, "pinecall_bridge_sse_reconnects_total", stream="call", reason="auth"
        )
        assert auth == 0
        assert openings(caplog) == []


def openings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The key gate's ERRORs: one per refusal of the key."""
    return [r for r in caplog.records if r.getMessage().startswith("Pinecall refuses the API")]


async def test_an_entry_too_large_to_read_is_noted_in_the_dead_letter_topic_and_passed(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    async with Simulator(sim_config()) as sim:
        handle = await following(start_bridge, sim, {**FAST_SSE, "max_event_bytes": 1024})
        calls = Calls(sim, "CA_big")
        [name] = calls.open(1)
        calls.write(name, "turn.user", {"text": "before"})
        big = calls.write(name, "call.summary", {"transcript": "x" * 5000})
        calls.durable[name].remove(big)  # it cannot be published as an event
        calls.write(name, "turn.agent", {"text": "after"})
        calls.write(name, "call.score", {"score": 5})
        await consume_until(kafka_bootstrap, [topics.events], has(calls.expected), within=60)
        records = await read_decided(kafka_bootstrap, topics, [topics.events, topics.dlq])
        assert_exactly_once_in_order(calls, [r for r in records if r.topic == topics.events])
        [note] = [r for r in records if r.topic == topics.dlq]
        assert note.headers["pinecall-dlq-reason"] == b"too_large"
        assert note.json() == {"call": name, "seq": big, "type": "call.summary", "bytes": ANY}
        assert note.json()["bytes"] > 5000
        # The call ended at its score: no reader of its log is left reconnecting over the entry.
        metrics = handle.metrics
        protocol = {"stream": "call", "reason": "protocol"}
        assert sample(metrics, "pinecall_bridge_sse_reconnects_total", **protocol) == 0
        assert (
            sample(metrics, "pinecall_bridge_events_dead_lettered_total", reason="too_large") == 1
        )


async def test_a_gap_too_large_to_read_is_still_read_from_the_pages(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    """The platform's log.gap carries the call's state, every turn so far: on a long call it
    passes the event limit where no entry does. Noted in its place, it moved the resume point past
    the entries it stood for, and they were never published."""
    rng = random.Random(15)
    async with Simulator(sim_config()) as sim:
        handle = await following(start_bridge, sim, {**FAST_SSE, "max_event_bytes": 2048})
        calls = Calls(sim, "CA_longcall")
        names = calls.open(2)
        for call in names:
            for _ in range(12):  # each turn well under the limit, all of them well over it
                calls.write(call, "turn.user", {"text": "words " * 40})
        await all_followed(sim, names)
        await through_a_gap(sim, handle, calls, names, rng)
        await end_and_check(kafka_bootstrap, topics, calls, names)
        dead = "pinecall_bridge_events_dead_lettered_total"
        assert sample(handle.metrics, dead, reason="too_large") == 0


async def test_call_ids_that_are_no_call_ids_are_refused_not_followed(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    # The org feed announces calls: one with a path in it would have its log read from
    # another URL (a server decoding %2F), a newline forges log lines, and a huge one was held
    # whole in the roster's maps (10,000 ended calls remembered) and logged on every reconnect.
    bad = ["CA_ids/../../v1/sessions", "CA_ids\n12:00:00 ERROR forged", "CA_ids" + "x" * 100_000]
    async with Simulator(sim_config()) as sim:
        handle = await following(start_bridge, sim)
        for call in bad:
            for seq, kind in enumerate(("call.started", "turn.user", "call.score"), start=1):
                sim.calllogs.append(entry(seq, kind, call=call, ts=time.time()))
        calls = Calls(sim, "CA_ids")
        [name] = calls.open(1)  # announced after the bad ones, on the same feed
        calls.write(name, "turn.user", {"text": "hello"})
        calls.end(name)
        await consume_until(kafka_bootstrap, [topics.events], has(calls.expected), within=60)
        records = await read_decided(kafka_bootstrap, topics, [topics.events, topics.dlq])
        events = [r for r in records if r.topic == topics.events]
        assert_exactly_once_in_order(calls, events)  # none of the bad calls' entries
        assert not [r for r in records if r.topic == topics.dlq]
        refused = sample(
            handle.metrics,
            "pinecall_bridge_events_rejected_total",
            channel="sse",
            reason="invalid_call_id",
        )
        assert refused >= len(bad)
        assert not any(sim.calllogs.readers(call) for call in bad)


def sse_env(sim: Simulator) -> dict[str, str]:
    return calllog_env(sim.url, API_KEY)


def followed_once(sim: Simulator, calls: list[str]) -> bool:
    """Each call has exactly one open stream: one follower in the whole deployment."""
    return all(len(sim.calllogs.readers(call)) == 1 for call in calls)


def resumes_logged(replica: Replica, since: int) -> dict[str, int]:
    """`after` of each `following call log` line the replica logged past byte `since`."""
    found: dict[str, int] = {}
    with replica.log.open("rb") as log:
        log.seek(since)
        for line in log:
            try:
                record = jsoncodec.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("msg") == "following call log":
                found[record["call"]] = record["after"]
    return found


async def test_replicas_split_calls_take_over_on_kill_and_resume_on_restart(
    kafka_bootstrap: str, topics: Topics, tmp_path: Any
) -> None:
    rng = random.Random(11)
    async with Simulator(sim_config()) as sim, aiohttp.ClientSession() as session:
        replicas = [
            Replica(
                name,
                replica_env(kafka_bootstrap, topics, port, **sse_env(sim)),
                tmp_path / f"{name}.log",
                port,
            )
            for name, port in (("a", free_port()), ("b", free_port()))
        ]
        a, b = replicas
        try:
            await asyncio.gather(a.start(), b.start())

            async def owned(replica: Replica) -> float:
                return total(
                    await replica.metrics(session), "pinecall_bridge_dedup_partitions_owned"
                )

            async def split() -> bool:
                return (
                    (await owned(a)) > 0
                    and (await owned(b)) > 0
                    and (await owned(a)) + await owned(b) == 6
                )

            await until(split, 60, 0.2, "both replicas own ingest partitions")
            async with asyncio.timeout(30):
                await sim.calllogs.wait_for_feed_readers(2)
            calls = Calls(sim, "CA_rep")
            names = calls.open(30)
            await play(calls, names, 5, rng)

            async def followed(replica: Replica) -> float:
                return total(await replica.metrics(session), "pinecall_bridge_sse_calls_followed")

            async def disjoint() -> bool:
                fa, fb = await followed(a), await followed(b)
                return fa > 0 and fb > 0 and fa + fb == len(names) and followed_once(sim, names)

            await until(disjoint, 60, 0.2, "each call followed by exactly one replica")

            a.kill()
            await play(calls, names, 5, rng)  # written while a's calls have no follower

            async def taken_over() -> bool:
                return (await followed(b)) == len(names) and followed_once(sim, names)

            await until(taken_over, 60, 0.2, "b follows every call after a was killed")
            await play(calls, names, 5, rng)

            restart_at = a.log.stat().st_size
            await a.start()
            await until(disjoint, 60, 0.2, "a follows its calls again after its restart")
            resumed = resumes_logged(a, restart_at)
            assert resumed, "a followed nothing after its restart"
            # Resumed from what was published, not from the first entry.
            assert all(after > 1 for after in resumed.values()), resumed
            await play(calls, names, 5, rng)
            await end_and_check(kafka_bootstrap, topics, calls, names)

            # The ownership rule's partition is the producer's: every ingest record of a call
            # is where partition_of says.
            ingest = await read_decided(kafka_bootstrap, topics, [topics.ingest])
            assert ingest
            for record in ingest:
                assert record.key is not None
                assert record.partition == partition_of(record.key.decode(), 6)
        finally:
            await asyncio.gather(*(r.stop() for r in replicas))


async def test_calls_past_the_cap_wait_their_turn_and_lose_nothing(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    rng = random.Random(12)
    async with Simulator(sim_config()) as sim:
        handle = await following(start_bridge, sim, {**FAST_SSE, "max_calls": 3})
        calls = Calls(sim, "CA_cap")
        names = calls.open(8)
        await play(calls, names, 5, rng)
        metrics = handle.metrics

        async def capped() -> bool:
            followed = sample(metrics, "pinecall_bridge_sse_calls_followed")
            return followed == 3 and sample(metrics, "pinecall_bridge_sse_calls_queued") == 5

        await until(capped, 60, 0.2, "3 calls followed, 5 queued")
        assert sum(len(sim.calllogs.readers(call)) for call in names) == 3
        # Each end frees a slot for the next call in the queue.
        await end_and_check(kafka_bootstrap, topics, calls, names)
        assert sample(metrics, "pinecall_bridge_sse_calls_queued") == 0


async def test_calls_that_drop_without_an_end_or_a_score_are_ended_and_free_their_slots(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    # A call that drops writes neither call.ended nor call.score: only its sealed log ends it,
    # read to its end by a JSON page after its stream closed with nothing new. With one slot, a
    # call not ended held it for good and the calls behind it were never read.
    rng = random.Random(21)
    async with Simulator(sim_config()) as sim:
        handle = await following(start_bridge, sim, {**FAST_SSE, "max_calls": 1})
        metrics = handle.metrics
        calls = Calls(sim, "CA_drop")
        names = calls.open(3)
        await play(calls, names, 4, rng)
        await until(
            lambda: sample(metrics, "pinecall_bridge_sse_calls_queued") == 2, 60, 0.05, "2 queued"
        )
        for call in names:
            calls.write(call, "user.transcript", {"text": "…"}, ephemeral=True)
            sim.calllogs.seal(call)
        await consume_until(kafka_bootstrap, [topics.events], has(calls.expected), within=90)
        read_to_end = "pinecall_bridge_sse_calls_read_to_end_total"

        def ended() -> float:
            # The one that saw its ephemeral last line live resumes from the log's last seq and is
            # answered 204; the others are read to their end by a page.
            return sample(metrics, read_to_end) + sim.stats.sealed_answers

        await until(lambda: ended() == 3, 60, 0.05, "each call ended by its sealed log")
        assert sample(metrics, read_to_end) >= 2
        assert sample(metrics, "pinecall_bridge_sse_calls_followed") == 0
        assert sample(metrics, "pinecall_bridge_sse_calls_queued") == 0
        records = await read_decided(kafka_bootstrap, topics, [topics.events])
        assert_exactly_once_in_order(calls, records)
        assert not sim.calllogs.readers()  # no stream left open on a sealed log


async def test_a_call_the_key_may_not_read_is_given_up_and_frees_its_slot(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    # Each call of the org feed the key may not read (403) held one of MAX_CALLS slots for the
    # life of the process: with one slot, the call behind it was never read.
    rng = random.Random(18)
    async with Simulator(sim_config()) as sim:
        sse = {**FAST_SSE, "max_calls": 1, "give_up_after_seconds": 1.0}
        handle = await following(start_bridge, sim, sse)
        calls = Calls(sim, "CA_forbid")
        forbidden, readable = f"{calls.prefix}_000", f"{calls.prefix}_001"
        sim.sse_forbid(forbidden)
        calls.open(1)  # announced first: it takes the one slot
        await until(lambda: sim.stats.sse_forbidden > 0, 20, 0.01, "the forbidden call asked for")
        calls.next_seq[readable] = 1
        calls.write(readable, "call.started", {"direction": "inbound"})
        await play(calls, [readable], 5, rng)

        def forbidden_given_up() -> float:
            return sample(
                handle.metrics, "pinecall_bridge_sse_calls_given_up_total", reason="forbidden"
            )

        await until(lambda: forbidden_given_up() == 1, 30, 0.05, "the 403 call given up")
        await all_followed(sim, [readable])
        del calls.durable[forbidden]
        await end_and_check(kafka_bootstrap, topics, calls, [readable])
        assert sample(handle.metrics, "pinecall_bridge_sse_calls_dropped_total") == 0


async def test_a_call_whose_first_notice_is_its_end_is_not_read_once_past_the_window(
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The feed's first notice of a call is its end (its start came before the feed connected);
    # the call then waits behind a busy slot until its end has left the dedup window. Read from
    # seq 0 then, what the webhook or feed carried of it would be published again.
    rng = random.Random(21)
    caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
    async with Simulator(sim_config()) as sim:
        calls = Calls(sim, "CA_late")
        [late] = calls.open(1)  # before the bridge: its start reaches no feed reader
        await play(calls, [late], 3, rng)
        # A window two seconds past the skew allowance: an end is in it for two seconds. No
        # call list: only the feed announces the call.
        handle: RunningBridge = await start_bridge(
            pinecall={"api_url": sim.url, "api_key": API_KEY},
            sse={**FAST_SSE, "max_calls": 1, "call_list_path": ""},
            dedup={"ttl_seconds": SKEW_ALLOWANCE_SECONDS + 2},
        )
        await owns_all(handle)
        async with asyncio.timeout(20):
            await sim.calllogs.wait_for_feed_readers(1)
        busy = f"{calls.prefix}_busy"
        calls.next_seq[busy] = 1
        calls.write(busy, "call.started", {"direction": "inbound"})
        await play(calls, [busy], 3, rng)
        await all_followed(sim, [busy])
        calls.end(late)  # its one notice: call.ended (the feed carries no summary or score)

        def queued() -> bool:
            return sample(handle.metrics, "pinecall_bridge_sse_calls_queued") == 1

        await until(queued, 20, 0.01, "the ended call waiting for the slot")
        await asyncio.sleep(3)
        del calls.durable[late]
        await end_and_check(kafka_bootstrap, topics, calls, [busy])
        dropped = "pinecall_bridge_sse_calls_dropped_total"
        await until(lambda: sample(handle.metrics, dropped) == 1, 20, 0.05, "the call let go")
        assert sample(handle.metrics, "pinecall_bridge_sse_calls_followed") == 0
    followed = [getattr(r, "call", None) for r in caplog.records if r.msg == "following call log"]
    assert followed == [busy]


async def test_a_call_list_answered_404_is_read_again_and_finds_the_calls(
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A proxy's 404 for the call list at start-up turned it off for the life of the process:
    # calls announced before the org feed connected were never found.
    rng = random.Random(19)
    caplog.set_level(logging.WARNING, logger="bridge.sources.calllog.source")
    monkeypatch.setattr(calllist, "MISSING_RETRY_SECONDS", 1.0)
    async with Simulator(sim_config()) as sim:
        calls = Calls(sim, "CA_unlisted")
        names = calls.open(3)  # before the bridge: no notice of them reaches it
        await play(calls, names, 3, rng)
        sim.sse_hide_list(3)
        await following(start_bridge, sim)
        await until(lambda: followed_once(sim, names), 30, 0.05, "the listed calls followed")
        assert sim.stats.lists_hidden >= 1
        await play(calls, names, 3, rng)
        await end_and_check(kafka_bootstrap, topics, calls, names)
    assert caplog.text.count("Pinecall has no call list here") == 1


async def test_a_live_call_that_started_before_the_lookback_is_found_and_followed(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    # The list comes newest first by start, with no `live` filter: a read that stopped at the
    # lookback (6 h) never reached a call started 7 h ago and still live, here started before
    # the bridge (no notice reaches it), behind pages of short calls that ended long ago.
    rng = random.Random(23)
    now, hour = time.time(), 3_600.0
    async with Simulator(sim_config()) as sim:
        calls = Calls(sim, "CA_long")
        [long] = ["CA_long_000"]
        sim.calllogs.append(entry(1, "call.started", call=long, ts=now - 7 * hour, data={}))
        calls.next_seq[long] = 2
        calls.durable[long].append(1)
        for n in range(450):
            short, started = f"CA_short_{n:03d}", now - 6.9 * hour + 6 * n
            sim.calllogs.append(entry(1, "call.started", call=short, ts=started, data={}))
            sim.calllogs.append(entry(2, "call.score", call=short, ts=started + 60, data={}))
        await play(calls, [long], 3, rng)
        await following(start_bridge, sim)
        await until(lambda: followed_once(sim, [long]), 30, 0.05, "the long call followed")
        await play(calls, [long], 3, rng)
        await end_and_check(kafka_bootstrap, topics, calls, [long])


async def stopped_behind(
    kafka_bootstrap: str,
    topics: Topics,
    bridge: RunningBridge,
    calls: Calls,
    live: list[str],
    rounds: int,
    rng: random.Random,
) -> dict[str, int]:
    """Once all of `calls` is published, `bridge` stopped and `rounds` more of `live` written
    while no bridge runs: each live call's last published seq."""
    await consume_until(kafka_bootstrap, [topics.events], has(calls.expected), within=60)
    published = {call: calls.durable[call][-1] for call in live}
    await bridge.bridge.stop()  # followers stop after what is in flight is acknowledged
    await play(calls, live, rounds, rng)
    return published


async def test_a_graceful_restart_resumes_live_calls_where_they_were(
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(13)
    async with Simulator(sim_config()) as sim:
        first = await following(start_bridge, sim)
        calls = Calls(sim, "CA_restart")
        names = calls.open(10)
        await play(calls, names, 5, rng)
        published = await stopped_behind(kafka_bootstrap, topics, first, calls, names, 5, rng)
        caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
        await following(start_bridge, sim)
        await end_and_check(kafka_bootstrap, topics, calls, names)
        resumed = dict(followed_from(caplog))
        assert set(resumed) == set(names)
        # From the last published entry (ephemerals after it are not published), not the start.
        assert all(resumed[call] == published[call] for call in names), (resumed, published)


async def test_a_takeover_in_steps_resumes_live_calls_from_their_records_and_not_ended_ones(
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The graceful restart's takeover with a step of 3 calls: a partition's 9-15 calls (live and
    # ended) go through the `sse-takeover` task, the loop free between steps, where the other
    # tests' few calls are taken all at once.
    step = 3
    rng = random.Random(24)
    async with Simulator(sim_config()) as sim:
        first = await following(start_bridge, sim)
        calls = Calls(sim, "CA_stepped")
        names = calls.open(36)
        await play(calls, names, 3, rng)
        ended = names[::3]
        live = [call for call in names if call not in ended]
        for call in ended:
            calls.end(call)
        published = await stopped_behind(kafka_bootstrap, topics, first, calls, live, 3, rng)
        # Both modules' step: the source picks the path by its name, the roster's chunks by its own.
        monkeypatch.setattr(roster_module, "TAKEOVER_STEP", step)
        monkeypatch.setattr(source_module, "TAKEOVER_STEP", step)
        takeovers: list[Takeover] = []
        stepped = asyncio.Event()
        step_of = Takeover.step

        def steps(takeover: Takeover) -> list[Start]:
            if takeover not in takeovers:
                takeovers.append(takeover)
            starts = step_of(takeover)
            stepped.set()
            return starts

        monkeypatch.setattr(Takeover, "step", steps)
        # The first call list's answer lands between a takeover's first and second steps (the
        # task yields after each), as a sweep does in a takeover of thousands: its rows offer
        # live and ended calls whose steps have not come yet.
        list_calls = calllist.list_calls
        under_way: list[list[int]] = []  # at the first answer: the unfinished takeovers' steps

        async def listed(*args: Any, **kwargs: Any) -> calllist.CallListing:
            listing = await list_calls(*args, **kwargs)
            if not under_way:
                stepped.clear()  # the next step's, whenever the answer came
                await stepped.wait()
                under_way.append([t.steps for t in takeovers if not t.done])
            return listing

        monkeypatch.setattr(source_module, "list_calls", listed)
        caplog.set_level(logging.INFO, logger="bridge.sources.calllog.source")
        await following(start_bridge, sim)
        await until(lambda: followed_once(sim, live), 10, 0.05, "the live calls followed again")
        assert under_way[0], "the listed calls were offered after the takeovers"
        assert sorted(t.partition for t in takeovers) == [0, 1, 2]
        for takeover in takeovers:
            mine = [call for call in names if partition_of(call, 3) == takeover.partition]
            assert len(mine) > step  # the stepped path, not all at once
            assert set(takeover.live) == set(mine) & set(live)
            assert all(takeover.ends(call) for call in set(mine) & set(ended))
            assert takeover.done
            assert takeover.steps > 4
        # Each live call once, from its last published entry; no ended call read again.
        assert sorted(followed_from(caplog)) == sorted(published.items())
        await end_and_check(kafka_bootstrap, topics, calls, live)
        assert sorted(followed_from(caplog)) == sorted(published.items())


def followed_from(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    """(call, after) of each `following call log` line captured: each follower started."""
    return [
        (r.__dict__["call"], r.__dict__["after"])
        for r in caplog.records
        if r.getMessage() == "following call log"
    ]


@pytest.mark.parametrize("apart", [False, True], ids=["one-process", "dedup-stage-apart"])
async def test_the_same_calls_by_webhook_feed_and_call_log_are_published_once_per_shape(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any], apart: bool
) -> None:
    """`apart`: the stages in two bridges, as BRIDGE_DEDUP__OWN_PROCESS splits a pod's workers.

    The ingest one takes webhooks and the feed; the dedup one follows the call logs.
    """
    # The feed sends some entries in the docs page's and the older SDK's shapes, which carry no
    # seq: the README's known limits publish such a frame beside its entry, under its content id.
    config = sim_config(retry_base=0.1, ws_documented_ratio=0.3, ws_legacy_ratio=0.3)
    async with Simulator(config) as sim:
        sections: dict[str, Any] = {
            "pinecall": {"api_url": sim.url, "api_key": API_KEY},
            "sse": FAST_SSE,
            "websocket": {
                "enabled": True,
                "url": sim.ws_url,
                "backoff_initial_seconds": 0.1,
                "backoff_max_seconds": 0.5,
            },
        }
        handle: RunningBridge = await start_bridge(stages="ingest" if apart else "both", **sections)
        stage = await start_bridge(stages="dedup", **sections) if apart else handle
        await owns_all(stage)
        sim.register_webhook(handle.url + handle.bridge.settings.webhook.path, secret=SECRET)
        async with asyncio.timeout(20):
            await sim.wait_for_subscribers(1)
            await sim.calllogs.wait_for_feed_readers(1)
        report = await sim.run_traffic(
            calls=20, concurrency=10, channel="all", duplicates=0.1, seed=20261201
        )
        expected = sim.ledger.expected_ids()
        assert {tuple(r["channels"]) for r in report.records} == {("webhook", "websocket", "sse")}
        assert {send.shape for send in sim.ws_sends} == {"log-entry", "documented", "legacy"}
        seqless = seqless_frames(sim)
        total_ids = len(expected) + len(seqless)
        await consume_until(kafka_bootstrap, [topics.events], has(total_ids), within=90)
        bridges = [handle, stage] if apart else [handle]

        def summed(name: str, **labels: str) -> float:
            return sum(sample(b.metrics, name, **labels) for b in bridges)

        async def all_ended() -> bool:
            return summed("pinecall_bridge_sse_calls_followed") == 0

        await until(all_ended, 60, 0.2, "every call log followed to its end")
        records = await read_decided(
            kafka_bootstrap, topics, [topics.events, topics.alerts, topics.dlq]
        )
        ingested = {
            channel: summed(INGESTED, channel=channel)
            for channel in ("webhook", "websocket", "sse")
        }
        if apart:  # webhooks and the feed went to the ingest bridge, the call logs to the other
            on_ingest, on_stage = (b.bridge.metrics.registry.get_sample_value for b in bridges)
            assert on_stage(INGESTED, {"channel": "webhook"}) == 0
            assert on_stage(INGESTED, {"channel": "websocket"}) == 0
            assert on_ingest(INGESTED, {"channel": "sse"}) == 0

    assert [r.topic for r in records if r.topic != topics.events] == []
    counts = Counter(r.json()["id"] for r in records)
    # Each entry once under its `(call, seq)`; each seq-less frame once more, its resent copies
    # (same bytes) dropped; nothing else.
    assert set(counts) == expected | seqless.keys()
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:5]
    assert not expected & seqless.keys()
    seen = {r.json()["id"]: r.json() for r in records}
    assert {
        i: (seen[i]["subject"], seen[i]["type"], seen[i]["pinecallchannel"]) for i in seqless
    } == seqless
    # Each channel carried every durable entry to the ingest topic; the dedup kept one of each.
    assert all(n >= len(expected) for n in ingested.values()), (ingested, len(expected))
    # Every follower ended at its log's last line, `call.score`, not at a 204 after a reconnect.
    assert sim.stats.sse_entries_streamed >= len(expected)
    assert sim.stats.sealed_answers == 0
