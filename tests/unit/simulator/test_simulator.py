import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import jsoncodec
from bridge.simulator import InvalidHookError, Simulator, SimulatorConfig, SimulatorStoppedError
from tests.sockets import ipv6_loopback
from tests.unit.simulator.conftest import AUTH, FAST, subscribe
from tests.unit.simulator.receiver import Received, Receiver


async def test_urls_follow_the_bound_port() -> None:
    sim = Simulator(SimulatorConfig(host="0.0.0.0", ws_path="/feed"))
    with pytest.raises(RuntimeError):
        _ = sim.url
    await sim.start()
    try:
        assert sim.port > 0
        assert sim.url == f"http://127.0.0.1:{sim.port}"
        assert sim.ws_url == f"ws://127.0.0.1:{sim.port}/feed"
        async with aiohttp.ClientSession() as client, client.ws_connect(sim.ws_url, headers=AUTH):
            pass
    finally:
        await sim.stop()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
async def test_the_ipv6_any_address_takes_ipv4_too_as_the_bridges_does() -> None:
    # `::` means dual stack to the bridge (BRIDGE_HTTP__HOST): the same to the simulator.
    async with Simulator(SimulatorConfig(host="::")) as sim:
        assert sim.url == f"http://[::1]:{sim.port}"
        for address in ("127.0.0.1", "::1"):
            _, writer = await asyncio.open_connection(address, sim.port)
            writer.close()
            await writer.wait_closed()


async def test_a_taken_port_fails_to_start() -> None:
    async with Simulator() as first:
        with pytest.raises(OSError):  # noqa: PT011 - EADDRINUSE
            await Simulator(SimulatorConfig(port=first.port)).start()


def open_files(path: Path) -> int:
    """How many of this process's file descriptors are `path` (Linux's /proc)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if fd.exists() and fd.resolve() == path.resolve())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="no /proc/self/fd to count fds")
async def test_a_failed_start_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    opened: list[aiohttp.ClientSession] = []
    real = aiohttp.ClientSession

    def recorded(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        opened.append(session := real(*args, **kwargs))
        return session

    monkeypatch.setattr(aiohttp, "ClientSession", recorded)  # the deliverer's client too
    path = tmp_path / "ledger.jsonl"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        sim = Simulator(SimulatorConfig(port=taken.getsockname()[1], ledger_path=path))
        with pytest.raises(OSError):  # noqa: PT011 - EADDRINUSE
            await sim.start()
    assert open_files(path) == 0, "the ledger's file was left open"
    assert [session.closed for session in opened] == [True], "the delivery client was left open"
    # Nothing half-closed stays behind: once the port is free the same simulator starts, and
    # delivers (its deliverer was closed, not left refusing every delivery as cancelled).
    await sim.start()
    try:
        assert open_files(path) == 1
        sim.register_webhook(receiver.url, "s")
        await sim.run_traffic(calls=1, channel="webhook", seed=1)
        assert {d.outcome for d in sim.deliveries} == {"ok"}
    finally:
        await sim.stop()


def test_register_webhook_checks_its_input() -> None:
    sim = Simulator()
    hook = sim.register_webhook("http://bridge/hook", "s", ["call.*"])
    assert (hook.url, hook.events, hook.secret) == ("http://bridge/hook", ("call.*",), "s")
    with pytest.raises(InvalidHookError):
        sim.register_webhook("bridge/hook")


async def test_stop_cancels_running_traffic(receiver: Receiver) -> None:
    async def never(_: Received) -> int:
        await asyncio.Event().wait()
        return 200

    receiver.answer = never
    sim = Simulator(FAST)
    await sim.start()
    sim.register_webhook(receiver.url, "s")
    traffic = asyncio.create_task(sim.run_traffic(calls=3, rate=50))
    await asyncio.sleep(0.2)
    await sim.stop()
    with pytest.raises(SimulatorStoppedError):
        await traffic
    assert sim.deliveries
    assert {d.outcome for d in sim.deliveries} == {"cancelled"}


async def test_stop_closes_connections_going_away() -> None:
    async with aiohttp.ClientSession() as client:
        sim = Simulator(FAST)
        await sim.start()
        ws = await subscribe(sim, client)
        await sim.stop()
        message = await ws.receive(timeout=5)
        assert message.data == 1001


async def test_the_ledger_file_holds_every_event(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    async with Simulator(SimulatorConfig(ledger_path=path)) as sim:
        report = await sim.run_traffic(calls=2, channel="webhook", seed=1)
    lines = [jsoncodec.loads(line) for line in path.read_bytes().splitlines()]
    assert lines == sim.ledger.records == report.records
    assert len(lines) == report.events


async def test_records_can_be_turned_off_for_benchmarks(receiver: Receiver) -> None:
    async with Simulator(SimulatorConfig(keep_records=False)) as sim:
        sim.register_webhook(receiver.url)
        report = await sim.run_traffic(calls=2, seed=1)
        assert (sim.ledger.records, sim.deliveries, sim.ws_sends, report.records) == (
            [],
            [],
            [],
            [],
        )
        assert sim.snapshot()["ledger_size"] == report.events
        assert sim.stats.deliveries_ok == report.events


async def test_snapshot_counts_what_happened(
    sim: Simulator, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim.register_webhook(receiver.url, "s")
    ws = await subscribe(sim, client)
    report = await sim.run_traffic(calls=1, seed=2)
    assert not ws.closed
    async with client.get(sim.url + "/_sim/stats") as response:
        stats = await response.json()
    assert stats == sim.snapshot()
    assert stats["events_generated"] == stats["ledger_size"] == report.events
    assert stats["deliveries_ok"] == stats["frames_sent"] == report.events
    assert (stats["connections_open"], stats["connections_subscribed"]) == (1, 1)
    assert (stats["token_requests"], stats["webhooks_registered"]) == (1, 1)
