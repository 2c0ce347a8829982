"""Open-loop load generators, each run as its own process by bench/run.py.

Every event has a scheduled send time fixed before the run starts (t0 + i / rate); latency is
measured from that time, so a slow bridge shows up as latency instead of as a slower sender.
Protocol with the orchestrator: print `ready`, read `go <t0>`, run, write results, print
`done`, exit on EOF of stdin.

  python -m bench.loadgen webhook --port P[,P2,...] --rate R --count N [--batch B] --out F
  (several ports: request j goes to port j mod n, round-robin, as a Service spreads them)
  python -m bench.loadgen ws --listen-port P --rate R|0 --count N --out F
  python -m bench.loadgen kcat --brokers B --topic T --rate R|0 --count N --out F
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import resource
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from bench import events
from bridge.sources.signature import signature_header

TICK = 0.001  # the pacer's period: due sends go out in small bursts at most 1 ms late


class Result:
    """What a generator saw: send schedule per event, and per request its latency and status."""

    def __init__(self, mode: str, count: int) -> None:
        self.mode = mode
        self.sched = array("d", bytes(8 * count))
        self.latency = array("d")
        self.statuses: collections.Counter[str] = collections.Counter()
        self.published = 0
        self.t0 = 0.0
        self.end = 0.0
        self.extra: dict[str, Any] = {}

    def write(self, out: Path) -> None:
        out.with_suffix(".sched").write_bytes(self.sched.tobytes())
        out.with_suffix(".lat").write_bytes(self.latency.tobytes())
        summary = {
            "mode": self.mode,
            "t0": self.t0,
            "end": self.end,
            "statuses": dict(self.statuses),
            "published": self.published,
            "cpu_s": _own_cpu(),
            **self.extra,
        }
        out.write_bytes(orjson.dumps(summary))


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _handshake() -> float:
    """Say ready, wait for the orchestrator's `go <t0>`."""
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    parts = line.split()
    if len(parts) != 2 or parts[0] != "go":
        raise SystemExit(f"loadgen: expected 'go <t0>', got {line!r}")
    t0 = float(parts[1])
    await asyncio.sleep(max(t0 - time.time(), 0.0))
    return t0


async def _finish(result: Result, out: Path) -> None:
    result.write(out)
    print("done", flush=True)
    # Keep serving (the WebSocket stays open) until the orchestrator closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# --- webhooks -------------------------------------------------------------------------------


def parse_response(buf: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """The first complete response in `buf`: (status, body, bytes used), None while incomplete.

    Bodies framed by Content-Length only (what every target answers); the header may come
    anywhere in the head, including last.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    total = end + 4 + length
    if len(buf) < total:
        return None
    return int(lines[0].split(None, 2)[1]), bytes(buf[end + 4 : total]), total


class _HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, responses parsed by hand."""

    def __init__(self, gen: WebhookGen) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.request = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (framed := parse_response(self.buf)) is not None:
            status, payload, total = framed
            del self.buf[:total]
            self.gen.answered(self, status, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class WebhookGen:
    """Signed webhook requests, pre-built before t0, sent open-loop over a connection pool."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.batch: int = args.batch
        self.requests_n = args.count // self.batch
        self.req_rate: float = args.rate / self.batch
        self.result = Result("webhook", self.requests_n * self.batch)
        secret = args.secret.encode()
        head = (
            f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        ).encode()
        self.wire: list[bytes] = []
        # Each body carries the time it is due at, were t0 now: sent at that or a little later,
        # it is current however long the run (the bridge refuses bodies minutes off as replays).
        built = time.time()
        for j in range(self.requests_n):
            payload = events.body(
                args.salt, args.first + j * self.batch, self.batch, built + j / self.req_rate
            )
            self.wire.append(
                head
                + f"X-Pinecall-Signature: {signature_header(secret, payload)}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
        self.ports = [int(p) for p in str(args.port).split(",")]
        # One pool and one backlog per port: round-robin holds even when one target is slower.
        self.free: list[list[_HttpConn]] = [[] for _ in self.ports]
        self.backlog: list[collections.deque[int]] = [collections.deque() for _ in self.ports]
        self.port_of: dict[_HttpConn, int] = {}
        self.next = 0
        self.answers = 0
        self.finished = asyncio.get_running_loop().create_future()
        self.t0 = 0.0
        self._reconnecting: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        for k in range(self.args.connections):
            await self._open(k % len(self.ports))

    async def _open(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(
            lambda: _HttpConn(self), "127.0.0.1", self.ports[slot]
        )
        # uvloop may run connection_made after create_connection returns: set it here.
        conn.transport = transport
        self.port_of[conn] = slot
        if self.backlog[slot]:
            self.send(conn, self.backlog[slot].popleft())
        else:
            self.free[slot].append(conn)

    async def _reopen(self, slot: int) -> None:
        with contextlib.suppress(OSError):  # the target is gone: the pool shrinks, as before
            await self._open(slot)

    def sched(self, j: int) -> float:
        return self.t0 + j / self.req_rate

    def start(self, t0: float) -> None:
        self.t0 = self.result.t0 = t0
        for j in range(self.requests_n):
            t = self.sched(j)
            for k in range(self.batch):
                self.result.sched[j * self.batch + k] = t
        # NaN until answered: a request never answered has no latency, not one of 0 ms.
        self.result.latency = array("d", [math.nan]) * self.requests_n
        self.tick()

    def tick(self) -> None:
        due = min(self.requests_n, int((time.time() - self.t0) * self.req_rate) + 1)
        for j in range(self.next, due):
            slot = j % len(self.ports)
            if self.free[slot]:
                self.send(self.free[slot].pop(), j)
            else:
                self.backlog[slot].append(j)
        self.next = max(self.next, due)
        if self.next < self.requests_n:
            asyncio.get_running_loop().call_later(TICK, self.tick)

    def send(self, conn: _HttpConn, j: int) -> None:
        conn.request = j
        assert conn.transport is not None
        conn.transport.write(self.wire[j])

    def answered(self, conn: _HttpConn, status: int, payload: bytes) -> None:
        j = conn.request
        now = time.time()
        self.result.latency[j] = now - self.sched(j)
        self.result.statuses[str(status)] += 1
        if status == 200:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                # The two-stage bridge answers `accepted` (in the ingest topic); the naive
                # handler, like the bridge before it, `published`.
                answer = orjson.loads(payload)
                self.result.published += int(answer.get("accepted", answer.get("published", 0)))
        self._done_one(now)
        slot = self.port_of[conn]
        if self.backlog[slot]:
            self.send(conn, self.backlog[slot].popleft())
        else:
            self.free[slot].append(conn)

    def lost(self, conn: _HttpConn) -> None:
        slot = self.port_of.get(conn, 0)
        if conn in self.free[slot]:
            self.free[slot].remove(conn)
        if conn.request >= 0 and math.isnan(self.result.latency[conn.request]):
            self.result.statuses["connection_lost"] += 1
            self._done_one(time.time())
        if not self.finished.done():
            # A server closing after an answer (`Connection: close`) must not shrink the pool
            # for the rest of the run: another connection takes its place.
            task = asyncio.get_running_loop().create_task(self._reopen(slot))
            self._reconnecting.add(task)
            task.add_done_callback(self._reconnecting.discard)

    def _done_one(self, now: float) -> None:
        self.answers += 1
        self.result.end = now
        if self.answers >= self.requests_n and not self.finished.done():
            self.finished.set_result(None)


async def run_webhook(args: argparse.Namespace) -> None:
    gen = WebhookGen(args)
    await gen.connect()
    t0 = await _handshake()
    gen.start(t0)
    timeout = args.count / args.rate + 60
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(gen.finished), timeout)
    gen.result.statuses["unanswered"] += gen.requests_n - gen.answers
    gen.result.extra["connections"] = args.connections
    await _finish(gen.result, Path(args.out))


# --- WebSocket feed -------------------------------------------------------------------------


async def run_ws(args: argparse.Namespace) -> None:
    """Serve the feed; once the bridge subscribed, push every event frame, paced or flat out."""
    frames = [
        orjson.dumps(events.entry(args.salt, args.first + i)).decode() for i in range(args.count)
    ]
    result = Result("ws", args.count)
    subscribed: asyncio.Future[web.WebSocketResponse] = asyncio.get_running_loop().create_future()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        # The simulator's defaults (permessage-deflate offered, 20 s heartbeat): like Pinecall.
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT and '"subscribe"' in message.data:
                await ws.send_str('{"type":"subscribed"}')
                if not subscribed.done():
                    subscribed.set_result(ws)
        return ws

    app = web.Application()
    app.router.add_get("/v1/ws", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.listen_port).start()
    ws = await asyncio.wait_for(subscribed, 60)
    t0 = await _handshake()
    result.t0 = t0
    sched = result.sched
    if args.rate <= 0:
        # Flat out: send() only waits when the socket's buffer is full, i.e. at the bridge's pace.
        for i, frame in enumerate(frames):
            sched[i] = time.time()
            await ws.send_str(frame)
    else:
        i = 0
        while i < args.count:
            due = min(args.count, int((time.time() - t0) * args.rate) + 1)
            while i < due:
                sched[i] = t0 + i / args.rate
                await ws.send_str(frames[i])
                i += 1
            await asyncio.sleep(TICK)
    result.end = time.time()
    result.statuses["sent"] = args.count
    await _finish(result, Path(args.out))
    # The bridge keeps the feed open, and aiohttp's cleanup waits for every handler (up to 60 s):
    # close it from here. The frames already written reach the bridge before the close frame.
    await ws.close()
    await runner.cleanup()


# --- kcat: librdkafka straight to the broker --------------------------------------------------


async def run_kcat(args: argparse.Namespace) -> None:
    """Pipe `key<TAB>CloudEvent` lines into `kcat -P` (acks=all, idempotent) at the rate."""
    lines = [events.cloudevent_line(args.salt, args.first + i) for i in range(args.count)]
    result = Result("kcat", args.count)
    proc = await asyncio.create_subprocess_exec(
        "kcat",
        "-P",
        "-b",
        args.brokers,
        "-t",
        args.topic,
        "-K",
        "\t",
        "-X",
        "enable.idempotence=true",
        "-X",
        "acks=all",
        "-X",
        "linger.ms=5",
        "-X",
        "batch.size=262144",
        stdin=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    t0 = await _handshake()
    result.t0 = t0
    if args.rate <= 0:
        for i in range(args.count):
            result.sched[i] = t0
        proc.stdin.write(b"".join(lines))
        await proc.stdin.drain()
    else:
        i = 0
        while i < args.count:
            due = min(args.count, int((time.time() - t0) * args.rate) + 1)
            if due > i:
                for k in range(i, due):
                    result.sched[k] = t0 + k / args.rate
                proc.stdin.write(b"".join(lines[i:due]))
                await proc.stdin.drain()
                i = due
            await asyncio.sleep(TICK)
    proc.stdin.close()
    code = await proc.wait()
    result.end = time.time()
    result.statuses["kcat_exit_" + str(code)] += 1
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.extra["kcat_cpu_s"] = children.ru_utime + children.ru_stime
    await _finish(result, Path(args.out))


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.loadgen")
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("webhook", "ws", "kcat"):
        p = sub.add_parser(name)
        p.add_argument("--rate", type=float, required=True, help="events/s; 0: flat out (ws, kcat)")
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--first", type=int, default=0)
        p.add_argument("--salt", type=int, required=True)
        p.add_argument("--out", required=True)
    hook = sub.choices["webhook"]
    hook.add_argument("--port", required=True, help="one port, or several comma-separated")
    hook.add_argument("--path", default="/webhooks/pinecall")
    hook.add_argument("--secret", default="bench-secret")
    hook.add_argument("--batch", type=int, default=1)
    hook.add_argument("--connections", type=int, default=128)
    sub.choices["ws"].add_argument("--listen-port", type=int, required=True)
    kcat = sub.choices["kcat"]
    kcat.add_argument("--brokers", required=True)
    kcat.add_argument("--topic", required=True)
    args = parser.parse_args()
    if args.mode == "webhook" and args.rate <= 0:
        # Open loop: every request has its scheduled send time, which needs a rate.
        parser.error("webhook needs --rate above 0 (flat out is for ws and kcat)")
    runner = {"webhook": run_webhook, "ws": run_ws, "kcat": run_kcat}[args.mode]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(runner(args))
    else:
        uvloop.run(runner(args))


if __name__ == "__main__":
    main()
