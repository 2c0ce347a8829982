import asyncio
import hashlib
import json
import time
import tracemalloc
from collections import defaultdict
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from bridge import jsoncodec
from bridge.normalise import normalise
from bridge.normalise.event import Event
from bridge.simulator import Simulator
from bridge.sources.signature import Verdict, verify
from tests.unit.simulator.conftest import FAST, subscribe
from tests.unit.simulator.receiver import Received, Receiver


async def read(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[tuple[float, str]]:
    """`count` text frames with the monotonic time each arrived."""
    frames = []
    for _ in range(count):
        frames.append((time.monotonic(), await ws.receive_str(timeout=5)))
    return frames


def keys(frames: list[tuple[float, str]]) -> list[tuple[str, int]]:
    return [(e["call"], e["seq"]) for e in (jsoncodec.loads(f) for _, f in frames)]


def hold_answers(receiver: Receiver) -> asyncio.Event:
    """Make the receiver answer 200 only once the returned event is set."""
    release = asyncio.Event()

    async def held(_: Received) -> int:
        await release.wait()
        return 200

    receiver.answer = held
    return release


async def test_both_channels_carry_every_event_with_the_same_signed_bytes(
    sim: Simulator, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim.register_webhook(receiver.url, "s3cret")
    ws = await subscribe(sim, client)
    report = await sim.run_traffic(calls=4, concurrency=2, seed=1)
    frames = await read(ws, report.events)
    assert report.events == sim.ledger.size == len(receiver.requests) == len(frames)
    assert sorted(r.body for r in receiver.requests) == sorted(f.encode() for _, f in frames)
    assert all(
        verify(r.headers["X-Pinecall-Signature"], r.body, [b"s3cret"]) is Verdict.VALID
        for r in receiver.requests
    )
    assert report.counters["deliveries_ok"] == report.events
    assert report.counters["frames_sent"] == report.events
    assert len({call for call, _ in keys(frames)}) == 4


async def test_each_channel_keeps_a_calls_seq_order(
    sim: Simulator, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim.register_webhook(receiver.url, "s")
    ws = await subscribe(sim, client)
    report = await sim.run_traffic(calls=5, concurrency=5, duplicates=0.3, reorder=0.5, seed=8)
    frames = await read(ws, report.counters["frames_sent"])
    for arrivals in (keys(frames), [r.key for r in receiver.requests]):
        per_call: dict[str, list[int]] = defaultdict(list)
        for call, seq in arrivals:
            per_call[call].append(seq)
        assert len(per_call) == 5
        assert all(seqs == sorted(seqs) for seqs in per_call.values())
    interleaved = [call for call, _ in keys(frames)]
    assert interleaved != sorted(interleaved)  # the calls ran at the same time


async def test_one_channel_only(
    sim: Simulator, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim.register_webhook(receiver.url, "s")
    ws = await subscribe(sim, client)
    webhook_only = await sim.run_traffic(calls=2, channel="webhook", seed=1)
    assert len(receiver.requests) == webhook_only.events
    assert webhook_only.counters["frames_sent"] == 0
    websocket_only = await sim.run_traffic(calls=2, channel="websocket", seed=2)
    assert len(receiver.requests) == webhook_only.events
    assert len(await read(ws, websocket_only.events)) == websocket_only.events
    assert {tuple(r["channels"]) for r in websocket_only.records} == {("websocket", "sse")}


async def test_duplicates_send_the_same_bytes_twice_on_each_channel(
    sim: Simulator, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim.register_webhook(receiver.url, "s")
    ws = await subscribe(sim, client)
    report = await sim.run_traffic(calls=1, duplicates=1.0, seed=3)
    frames = await read(ws, 2 * report.events)
    for copies in ([r.body.decode() for r in receiver.requests], [f for _, f in frames]):
        assert len(copies) == 2 * report.events
        assert copies[0::2] == copies[1::2]  # each copy right after its original
    assert [d.copy for d in sim.deliveries[:4]] == [0, 1, 0, 1]
    assert report.counters["duplicate_deliveries"] == report.events
    assert report.counters["duplicate_frames"] == report.events


async def test_without_reorder_frames_do_not_wait_for_the_webhook(
    sim: Simulator, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    release = hold_answers(receiver)
    sim.register_webhook(receiver.url, "s")
    ws = await subscribe(sim, client)
    traffic = asyncio.create_task(sim.run_traffic(calls=1, seed=5))
    frames = await read(ws, 5)  # while not one webhook is answered
    assert len(frames) == 5
    release.set()
    await traffic


async def test_reorder_holds_each_frame_until_its_webhook_is_answered(
    sim: Simulator, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    release = hold_answers(receiver)
    sim.register_webhook(receiver.url, "s")
    ws = await subscribe(sim, client)
    traffic = asyncio.create_task(sim.run_traffic(calls=2, reorder=1.0, seed=5))
    with pytest.raises(TimeoutError):
        await ws.receive(timeout=0.2)
    release.set()
    report = await traffic
    frames = await read(ws, report.events)
    posted = {r.key: r.at for r in receiver.requests}
    assert all(posted[key] < at for key, (at, _) in zip(keys(frames), frames, strict=True))


async def test_webhook_event_filters_are_honoured(sim: Simulator, receiver: Receiver) -> None:
    sim.register_webhook(receiver.url, "s", events=["call.*"])
    await sim.run_traffic(calls=2, channel="webhook", seed=1)
    types = {jsoncodec.loads(r.body)["type"] for r in receiver.requests}
    assert types == {"call.started", "call.ended", "call.summary", "call.score"}


def replayable(sim: Simulator) -> list[tuple[Any, ...]]:
    """The ledger without what may differ between runs (ts), in (call, seq) order."""
    rows = [(r["call"], r["seq"], r["type"], r["ephemeral"], r["entry"]["agent"],
             jsoncodec.dumps(r["entry"]["data"])) for r in sim.ledger.records]  # fmt: skip
    return sorted(rows)


async def test_the_same_seed_gives_the_same_traffic(receiver: Receiver) -> None:
    runs = []
    for seed in (11, 11, 12):
        async with Simulator(FAST) as sim:
            sim.register_webhook(receiver.url, "s")
            report = await sim.run_traffic(calls=6, concurrency=3, duplicates=0.4, seed=seed)
            copies = sorted((d.call, d.seq, d.copy) for d in sim.deliveries)
            runs.append((report.seed, replayable(sim), copies))
    assert runs[0] == runs[1]
    assert runs[0][1] != runs[2][1]
    assert runs[0][2] != [(c, s, 0) for c, s, _ in runs[0][2]]  # some duplicates were made


def fingerprint(sim: Simulator) -> str:
    """Every event and delivery a run made, but for the times (and an alert's day in its data)."""
    events = sorted(
        (r["call"] or "", r["seq"], r["type"], r["entry"]["agent"], r["channels"],
         r["entry"]["data"] if r["call"] else {})
        for r in sim.ledger.records
    )  # fmt: skip
    copies = sorted((d.call, d.seq, d.copy) for d in sim.deliveries)
    return hashlib.sha256(jsoncodec.dumps([events, copies])).hexdigest()


async def test_a_seed_plays_the_calls_it_always_played(receiver: Receiver) -> None:
    # Recorded when every call was generated before the first was played: calls made as they
    # start must be the same calls, with the same plans, alerts and copies.
    async with Simulator(FAST) as sim:
        sim.register_webhook(receiver.url, "s")
        report = await sim.run_traffic(
            calls=7, concurrency=3, duplicates=0.4, reorder=0.5, alerts=0.5, seed=11
        )
        assert (report.events, fingerprint(sim)) == (EVENTS_OF_SEED_11, FINGERPRINT_OF_SEED_11)


EVENTS_OF_SEED_11 = 128
# Re-recorded when two answers of script.py took é, € and an emoji: only their text moved.
FINGERPRINT_OF_SEED_11 = "7d5d81522320a18af79283f2b372b9ffc9ff87b763a1cd8b53a2efdcd08ebc5c"


async def traffic_peak(calls: int) -> int:
    """The most memory a run of `calls` calls held at once, with nothing kept after a call."""
    quiet = replace(FAST, keep_records=False, sse_retain_calls=10)
    async with Simulator(quiet) as sim:
        tracemalloc.start()
        try:
            report = await sim.run_traffic(calls=calls, channel="sse", seed=1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert report.calls == calls
    return peak


async def test_memory_is_bounded_by_the_calls_in_flight_not_the_calls_asked_for() -> None:
    # 200k calls once took 1.4 GB: every call was generated before the first was played.
    # That was 6.5 KB more a call, 12 MB more here; what is in flight is the same for both.
    few, many = await traffic_peak(100), await traffic_peak(2000)
    assert many - few < 3_000_000, f"{few} bytes at most for 100 calls, {many} for 2,000"


async def test_a_random_seed_is_reported(sim: Simulator) -> None:
    first = await sim.run_traffic(calls=1)
    second = await sim.run_traffic(calls=1)
    assert first.seed != second.seed


async def test_the_ledger_is_the_ground_truth(sim: Simulator, receiver: Receiver) -> None:
    sim.register_webhook(receiver.url, "s")
    report = await sim.run_traffic(calls=3, seed=4)
    bodies = {r.key: jsoncodec.loads(r.body) for r in receiver.requests}
    assert sim.ledger.records == report.records
    for record in sim.ledger.records:
        assert record["entry"] == bodies[record["call"], record["seq"]]
        assert record["durable"] is not record["ephemeral"]
        assert record["channels"] == ["webhook", "websocket", "sse"]
    durable = {key for key, entry in bodies.items() if not entry["ephemeral"]}
    assert sim.ledger.expected_ids() == {f"{call}:{seq}" for call, seq in durable}
    assert report.counters["events_durable"] == len(durable)
    assert 0 < report.counters["events_ephemeral"] == report.events - len(durable)


async def test_traffic_can_wait_for_a_subscriber(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    with pytest.raises(TimeoutError):
        await sim.run_traffic(calls=1, subscribers=1, subscriber_timeout=0.1)
    assert sim.ledger.size == 0
    traffic = asyncio.create_task(sim.run_traffic(calls=1, subscribers=1, seed=1))
    await asyncio.sleep(0.05)
    assert not traffic.done()
    ws = await subscribe(sim, client)
    report = await traffic
    assert len(await read(ws, report.events)) == report.events


async def test_the_rate_spreads_events_over_time(sim: Simulator) -> None:
    report = await sim.run_traffic(calls=2, rate=200, seed=1)
    assert report.seconds >= (report.events - 1) / 200
    assert report.seconds < 5


async def test_alerts_are_posted_as_the_platform_posts_them(
    sim: Simulator, receiver: Receiver
) -> None:
    sim.register_webhook(receiver.url, "s3cret")
    # The platform's way: call events in the call logs only, the webhook carries alerts.
    report = await sim.run_traffic(calls=4, channel="sse", alerts=1.0, seed=6)
    assert report.counters["alerts_generated"] == len(receiver.requests) == 4
    alerts = [r for r in sim.ledger.records if r["call"] is None]
    assert len(alerts) == 4
    for request in receiver.requests:
        body = jsoncodec.loads(request.body)
        assert list(body) == ["type", "org", "env", "agent", "at", "data"]
        assert body["type"] in {"monitor.fired", "spend.unusual", "credits.exhausted"}
        assert isinstance(body["at"], float)
        assert request.body == json.dumps(body, separators=(",", ":")).encode()  # the stdlib's
        assert request.headers["X-Pinecall-Event"] == body["type"]
        signature = request.headers["X-Pinecall-Signature"]
        assert signature.startswith("sha256=")
        assert verify(signature, request.body, [b"s3cret"]) is Verdict.VALID
        # The id the bridge gives it is the one the ledger expects, and it goes to the alerts.
        event = normalise(body, channel="webhook", received_at=time.time())
        assert isinstance(event, Event)
        assert event.call is None
        assert event.id in sim.ledger.expected_ids()
    assert all(r["channels"] == ["webhook"] and r["delivered"] for r in alerts)
    # Each is a line of its agent's own log, numbered there.
    seqs: dict[str, list[int]] = defaultdict(list)
    for record in alerts:
        seqs[record["entry"]["agent"]].append(record["seq"])
    assert all(sorted(n) == list(range(1, len(n) + 1)) for n in seqs.values())
    assert report.counters["events_durable"] + 4 == len(sim.ledger.expected_ids())


async def test_an_alert_the_bridge_refuses_twice_is_refused_not_expected(
    sim: Simulator, receiver: Receiver
) -> None:
    async def unavailable(_: Received) -> int:
        return 503

    receiver.answer = unavailable
    sim.register_webhook(receiver.url, "s")
    report = await sim.run_traffic(calls=3, channel="sse", alerts=1.0, seed=6)
    alert_ids = {r["id"] for r in sim.ledger.records if r["call"] is None}
    assert len(alert_ids) == 3
    assert [len(d.attempts) for d in sim.deliveries] == [2, 2, 2]  # Pinecall's two attempts
    assert sim.ledger.refused_ids() == alert_ids
    assert sim.ledger.expected_ids().isdisjoint(alert_ids)
    assert len(sim.ledger.expected_ids()) == report.counters["events_durable"]


async def test_no_alerts_unless_asked(sim: Simulator, receiver: Receiver) -> None:
    sim.register_webhook(receiver.url, "s")
    report = await sim.run_traffic(calls=3, channel="sse", seed=6)
    assert (report.counters["alerts_generated"], receiver.requests) == (0, [])
