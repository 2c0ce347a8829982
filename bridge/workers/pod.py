"""Whichever worker a probe or scrape reaches answers for the pod, asking every worker's socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from bridge import jsoncodec
from bridge.app import NOT_LISTENING
from bridge.metrics import CONTENT_TYPE
from bridge.sources.capped import BodyTooLargeError, read_capped
from bridge.sources.webhook import json_response
from bridge.workers.merge import merge
from bridge.workers.probes import DOWN, STARTING, UNREACHABLE, Answer, pod_answer

# A worker this slow counts as unreachable. Every worker is asked at once, so a probe's answer
# takes this long at most: the chart's probes wait 2 s, and refuse less with worker processes.
ASK_TIMEOUT_SECONDS = 1.0
# The most of a worker's answer read: a probe's is a line of JSON; an exposition is some hundred
# KiB. A worker gone wrong must not fill every worker's memory at each scrape.
MAX_PROBE_BYTES = 64 * 1024
MAX_METRICS_BYTES = 32 * 1024 * 1024

log = logging.getLogger(__name__)


class PodView:
    """/healthz, /readyz and /metrics of the pod, from every worker's own on its unix socket.

    `serving`: the workers whose readiness is the pod's (all by default).
    """

    def __init__(
        self,
        sockets: Mapping[str, Path],
        timeout: float = ASK_TIMEOUT_SECONDS,
        *,
        serving: Collection[str] | None = None,
    ) -> None:
        self._sockets = dict(sockets)
        self._serving = None if serving is None else set(serving)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        # The workers that have answered this view: a socket of theirs gone since means an exit.
        self._seen: set[str] = set()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
        ]

    def _session(self, worker: str) -> aiohttp.ClientSession:
        session = self._sessions.get(worker)
        if session is None or session.closed:
            # A new connection per request: a pooled one to a restarted worker would be dead.
            connector = aiohttp.UnixConnector(str(self._sockets[worker]), force_close=True)
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._sessions[worker] = session
        return session

    async def _get(self, worker: str, path: str) -> tuple[int, bytes] | str:
        """`worker`'s answer to GET `path`, or UNREACHABLE, DOWN (no process at its socket) or
        STARTING (no socket yet)."""
        cap = MAX_METRICS_BYTES if path == "/metrics" else MAX_PROBE_BYTES
        try:
            async with self._session(worker).get(f"http://worker-{worker}{path}") as response:
                answer = response.status, await read_capped(response, cap)
                self._seen.add(worker)
                return answer
        except BodyTooLargeError as exc:
            # Counted as unreachable: in the probe's answer, and in workers_unreachable.
            log.error(
                "a worker's answer is too large: it counts as unreachable",
                extra={"worker": worker, "path": path, "error": str(exc)},
            )
            return UNREACHABLE
        except aiohttp.ClientConnectorError as exc:
            # Refused: the process exited (a wedged one's socket still accepts). Absent: removed at
            # its exit, or not made yet at the pod's start: a worker not yet serving would bind
            # the port (its share of webhooks refused until Kafka is connected) once ready here.
            if isinstance(exc.os_error, ConnectionRefusedError):
                return DOWN
            if isinstance(exc.os_error, FileNotFoundError):
                return DOWN if worker in self._seen else STARTING
            return UNREACHABLE
        except (aiohttp.ClientError, TimeoutError, OSError):
            return UNREACHABLE

    async def _ask(self, path: str) -> dict[str, tuple[int, bytes] | str]:
        answers = await asyncio.gather(*(self._get(worker, path) for worker in self._sockets))
        return dict(zip(self._sockets, answers, strict=True))

    async def ask(self, path: str) -> dict[str, tuple[int, bytes] | None]:
        """Every worker's answer to GET `path`, at once; None where none came in time."""
        return {
            worker: answer if isinstance(answer, tuple) else None
            for worker, answer in (await self._ask(path)).items()
        }

    async def _probe(
        self,
        path: str,
        ok: str,
        not_ok: str,
        counted: Collection[str] | None = None,
        *,
        excuse_down: bool = False,
    ) -> web.Response:
        answers: dict[str, Answer] = {}
        down: list[str] = []
        starting: list[str] = []
        for worker, answer in (await self._ask(path)).items():
            if isinstance(answer, tuple):
                answers[worker] = answer[0], _status(answer[1])
            else:
                answers[worker] = None
            # A restarted worker not ready yet holds no listener either, nor a stopping one
            # once it closed it (bridge/service.py).
            unbound = answers[worker] == (503, NOT_LISTENING)
            # Shown in both probes: /healthz calling a restarting worker `unreachable` read as a
            # wedged one. Only /readyz excuses it.
            if answer == DOWN or unbound:
                down.append(worker)
            if answer == STARTING:
                starting.append(worker)
        status, body = pod_answer(
            answers, ok, not_ok, counted, down=down, starting=starting, excuse_down=excuse_down
        )
        return json_response(body, status=status)

    async def healthz(self, _: web.Request) -> web.Response:
        """Alive only when every worker is: a worker down (restarting) counts, shown as down."""
        return await self._probe("/healthz", "alive", "not_alive")

    async def readyz(self, _: web.Request) -> web.Response:
        """Ready while every serving worker with a process is ready, and one at least is: one
        not started yet (no socket, never answered) is not excused."""
        # A worker down holds no listener: the others take every new connection meanwhile. If
        # it stays down, the parent's restart budget runs out and it stops the pod (all 503).
        return await self._probe("/readyz", "ready", "not_ready", self._serving, excuse_down=True)

    async def metrics(self, _: web.Request) -> web.Response:
        texts = {
            worker: answer[1].decode() if answer is not None and answer[0] == 200 else None
            for worker, answer in (await self.ask("/metrics")).items()
        }
        # Parsing N expositions takes milliseconds: not on the loop that answers webhooks.
        body = await asyncio.to_thread(merge, texts)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def _status(body: bytes) -> str:
    """The `status` of a worker's probe answer."""
    try:
        parsed = jsoncodec.loads(body)
    except ValueError:
        return "invalid_answer"
    status = parsed.get("status") if isinstance(parsed, dict) else None
    return status if isinstance(status, str) else "invalid_answer"
