import asyncio
import dataclasses
import random
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

from bridge import jsoncodec
from bridge.simulator import SimulatorConfig, Stats
from bridge.simulator.delivery import Deliverer
from bridge.simulator.hooks import Hook, HookStore
from bridge.simulator.records import Delivery
from bridge.sources.signature import Verdict, verify
from tests.entries import entry
from tests.sockets import refusing_address
from tests.unit.simulator.conftest import FAST
from tests.unit.simulator.receiver import Received, Receiver


def body(call: str, seq: int) -> bytes:
    return jsoncodec.dumps(entry(seq, "turn.agent", call=call, agent="a", data={"text": "hi"}))


async def started(config: SimulatorConfig = FAST) -> Deliverer:
    deliverer = Deliverer(config, Stats())
    await deliverer.start()
    return deliverer


@pytest.fixture
async def deliverer() -> AsyncIterator[Deliverer]:
    deliverer = await started()
    yield deliverer
    await deliverer.close()


def hook_for(receiver: Receiver, secret: str | None = "s3cret") -> Hook:
    return HookStore().create(receiver.url, ("*",), secret)


def send(deliverer: Deliverer, hook: Hook, call: str, seq: int) -> asyncio.Future[Delivery]:
    return deliverer.submit(hook, body(call, seq), call=call, seq=seq, event_type="turn.agent")


async def test_the_exact_bytes_are_posted_and_signed(
    deliverer: Deliverer, receiver: Receiver
) -> None:
    await send(deliverer, hook_for(receiver), "CA_1", 1)
    [request] = receiver.requests
    assert request.body == body("CA_1", 1)
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Pinecall-Event"] == "turn.agent"
    signature = request.headers["X-Pinecall-Signature"]
    assert signature.startswith("sha256=")
    assert verify(signature, request.body, [b"s3cret"]) is Verdict.VALID
    [record] = deliverer.records
    assert (record.outcome, record.call, record.seq, record.copy) == ("ok", "CA_1", 1, 0)
    assert [a.status for a in record.attempts] == [200]


async def test_bare_signatures_and_unsigned_hooks(receiver: Receiver) -> None:
    deliverer = await started(dataclasses.replace(FAST, signature="bare"))
    await send(deliverer, hook_for(receiver), "CA_1", 1)
    await send(deliverer, hook_for(receiver, secret=None), "CA_1", 2)
    await deliverer.close()
    signed, unsigned = receiver.requests
    assert not signed.headers["X-Pinecall-Signature"].startswith("sha256=")
    assert verify(signed.headers["X-Pinecall-Signature"], signed.body, [b"s3cret"]) is Verdict.VALID
    assert "X-Pinecall-Signature" not in unsigned.headers


async def test_a_5xx_is_retried_until_it_succeeds(receiver: Receiver) -> None:
    statuses = iter([503, 500, 200])

    async def flaky(_: Received) -> int:
        return next(statuses)

    receiver.answer = flaky
    deliverer = await started(dataclasses.replace(FAST, max_attempts=3))
    await send(deliverer, hook_for(receiver), "CA_1", 1)
    await deliverer.close()
    [record] = deliverer.records
    assert [a.status for a in record.attempts] == [503, 500, 200]
    assert record.outcome == "ok"
    assert record.retried
    assert len({r.body for r in receiver.requests}) == 1  # a retry sends the same bytes


async def test_by_default_it_gives_up_after_two_attempts_as_pinecall_does(
    deliverer: Deliverer, receiver: Receiver
) -> None:
    async def broken(_: Received) -> int:
        return 503

    receiver.answer = broken
    await send(deliverer, hook_for(receiver), "CA_1", 1)
    [record] = deliverer.records
    assert [a.status for a in record.attempts] == [503, 503]
    assert record.outcome == "failed"


@pytest.mark.parametrize("status", [400, 401, 404, 410, 429])
async def test_a_4xx_is_final(deliverer: Deliverer, receiver: Receiver, status: int) -> None:
    async def refuse(_: Received) -> int:
        return status

    receiver.answer = refuse
    await send(deliverer, hook_for(receiver), "CA_1", 1)
    [record] = deliverer.records
    assert (record.outcome, len(record.attempts)) == ("rejected", 1)
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [302, 307, 308])
async def test_a_redirect_is_final_and_not_followed(
    deliverer: Deliverer, receiver: Receiver, status: int
) -> None:
    # Pinecall's httpx client follows none: a webhook URL behind an http -> https redirect
    # loses its alerts, which the simulator must show rather than deliver through it.
    answers = iter([status, 200])

    async def redirect_once(_: Received) -> int:
        return next(answers)

    receiver.answer = redirect_once
    receiver.location = receiver.url
    await send(deliverer, hook_for(receiver), "CA_1", 1)
    [record] = deliverer.records
    assert [a.status for a in record.attempts] == [status]
    assert record.outcome == "rejected"
    assert len(receiver.requests) == 1


async def test_it_gives_up_after_max_attempts(receiver: Receiver) -> None:
    async def broken(_: Received) -> int:
        return 500

    receiver.answer = broken
    deliverer = await started(dataclasses.replace(FAST, max_attempts=3))
    await send(deliverer, hook_for(receiver), "CA_1", 1)
    await deliverer.close()
    [record] = deliverer.records
    assert (record.outcome, len(record.attempts)) == ("failed", 3)


async def test_transport_errors_and_timeouts_are_retried(receiver: Receiver) -> None:
    slow = iter([True, False])

    async def sometimes_slow(_: Received) -> int:
        if next(slow):
            await asyncio.Event().wait()  # never answers: the attempt times out
        return 200

    receiver.answer = sometimes_slow
    # The retry's answer must come within it: at 0.2 s, a loaded CI box can time it out too.
    deliverer = await started(dataclasses.replace(FAST, delivery_timeout=1.0, max_attempts=2))
    await send(deliverer, hook_for(receiver), "CA_1", 1)
    nowhere = HookStore().create(f"http://{refusing_address()}/hook", ("*",), "s")
    await send(deliverer, nowhere, "CA_2", 1)
    await deliverer.close()
    timed_out, refused = deliverer.records
    assert [(a.status, a.error) for a in timed_out.attempts] == [(None, "timeout"), (200, None)]
    assert timed_out.outcome == "ok"
    assert refused.outcome == "failed"
    assert all(a.status is None and a.error for a in refused.attempts)


async def test_a_calls_deliveries_stay_in_order_while_calls_run_in_parallel(
    deliverer: Deliverer, receiver: Receiver
) -> None:
    rng = random.Random(4)
    seen: dict[tuple[str, int], int] = defaultdict(int)

    async def jittery(request: Received) -> int:
        seen[request.key] += 1
        await asyncio.sleep(rng.uniform(0, 0.01))
        # Every third event fails first: its retry must not let its successor overtake it.
        return 503 if request.key[1] % 3 == 0 and seen[request.key] == 1 else 200

    receiver.answer = jittery
    hook = hook_for(receiver)
    futures = [send(deliverer, hook, f"CA_{c}", seq) for seq in range(1, 11) for c in range(5)]
    await asyncio.gather(*futures)
    arrivals: dict[str, list[int]] = defaultdict(list)
    for request in receiver.requests:
        call, seq = request.key
        arrivals[call].append(seq)
    for seqs in arrivals.values():
        assert seqs == sorted(seqs)
        assert set(seqs) == set(range(1, 11))
    assert receiver.most_in_flight > 1
    assert all(r.outcome == "ok" for r in deliverer.records)
    assert sum(r.retried for r in deliverer.records) == 15


async def test_requests_in_flight_are_bounded(receiver: Receiver) -> None:
    async def slow(_: Received) -> int:
        await asyncio.sleep(0.05)
        return 200

    receiver.answer = slow
    deliverer = await started(dataclasses.replace(FAST, delivery_concurrency=2))
    hook = hook_for(receiver)
    await asyncio.gather(*(send(deliverer, hook, f"CA_{c}", 1) for c in range(8)))
    await deliverer.close()
    assert receiver.most_in_flight == 2


async def test_closing_abandons_what_is_pending(receiver: Receiver) -> None:
    async def never(_: Received) -> int:
        await asyncio.Event().wait()
        return 200

    receiver.answer = never
    deliverer = await started()
    hook = hook_for(receiver)
    futures = [send(deliverer, hook, "CA_1", 1), send(deliverer, hook, "CA_1", 2)]
    await asyncio.sleep(0.05)
    await deliverer.close()
    assert all(f.done() for f in futures)
    assert [r.outcome for r in deliverer.records] == ["cancelled", "cancelled"]
    assert send(deliverer, hook, "CA_1", 3).done()
