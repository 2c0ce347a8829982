"""The supervisor of a pod's worker processes: start them, restart the ones that exit, stop all.

It serves nothing itself. SIGTERM, SIGINT or SIGHUP (bridge/stopsignals.py) is forwarded to every
worker (to a dedup process once the others have exited, with what is left of the pod's grace
period: the deadline is shared through the runtime directory), each drains as a single process
does, and the parent exits 0 once all have stopped cleanly; workers still running
`GRACE_MARGIN_SECONDS` after the grace period are killed. A worker exiting on its own is
restarted after a pause, and so is one killed for answering no probe for `silent` seconds
(BRIDGE_HTTP__WORKER_SILENCE_SECONDS: stopped, or its event loop wedged; 0: never killed), or
none since its spawn for its start-up allowance (silence.py); too many such exits (budget.py)
stop the pod with exit code 1. Each spawn hands the worker the `.env` variables the parent read on
a descriptor of its own, of a file with no name (role.dotenv_descriptor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bridge import listen
from bridge.cancelling import cancel_and_wait
from bridge.config import Settings
from bridge.stopbudget import SUPERVISOR_MARGIN_SECONDS, StopBudget
from bridge.stopsignals import held_stop, stop_signals
from bridge.workers.budget import GiveUp, RestartBudget
from bridge.workers.pod import PodView
from bridge.workers.role import (
    WorkerRole,
    dotenv_descriptor,
    stages_of,
    stop_by_file,
    write_stop_by,
)
from bridge.workers.silence import START_UP_SECONDS, Silence, silent_past_bound

log = logging.getLogger(__name__)

# Past the workers' own grace period: room for a Kafka client's stop cut short at a short grace
# period's end, and the exit after it (bridge/stopbudget.py; config checks the grace fits).
GRACE_MARGIN_SECONDS = SUPERVISOR_MARGIN_SECONDS
# A worker killed by the stop signal itself had not installed its handler yet: nothing was taken.
_CLEAN_EXITS = {0, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP}
# A worker answering no probe on its unix socket this long (since its last answer; a start-up
# has START_UP_SECONDS) is killed, then restarted: stopped (SIGSTOP) or its loop wedged, it would
# never exit. Under the chart's liveness probe (4 failures 10 s apart), so one worker restarts
# before the whole pod does. The default of BRIDGE_HTTP__WORKER_SILENCE_SECONDS; 0: no watchdog.
SILENT_SECONDS = 15.0
PROBE_EVERY_SECONDS = 1.0
# The same stop signal again this soon after the first is the same stop, delivered twice: make
# and tools/run-demo.sh pass on the SIGTERM their process group got too, and `timeout` signals
# its command, then its group. Taken for a hurry, it would stop the dedup process at once.
SAME_STOP_SECONDS = 1.0
# sun_path holds 108 bytes on Linux, its terminating NUL included.
_MAX_UNIX_PATH = 107


def exit_fields(code: int) -> dict[str, object]:
    """A worker's exit for the log: its code, and the signal's name when a signal ended it."""
    fields: dict[str, object] = {"exit_code": code}
    if code < 0:
        with contextlib.suppress(ValueError):
            fields["signal"] = signal.Signals(-code).name
    return fields


class Parent:
    """Keeps `count` workers running until told to stop.

    With `dedup_process`, the last of them runs the dedup stage alone and the others only the
    ingest stage; without, every worker runs both.
    """

    def __init__(
        self,
        count: int,
        runtime_dir: Path,
        grace_seconds: float,
        *,
        dedup_process: bool = False,
        command: Sequence[str] = (sys.executable, "-m", "bridge", "run"),
        budget: RestartBudget | None = None,
        margin: float = GRACE_MARGIN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        silent: float = SILENT_SECONDS,
        probe_every: float = PROBE_EVERY_SECONDS,
        start_up: float = START_UP_SECONDS,
        dotenv: Mapping[str, str | None] | None = None,
    ) -> None:
        self._grace = grace_seconds
        self._margin = margin
        self._count = count
        self._dedup_process = dedup_process
        self._runtime_dir = runtime_dir
        self._command = list(command)
        self._budget = budget if budget is not None else RestartBudget()
        self._clock = clock
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._restarts = [0] * count
        self._stopped_with: dict[int, int] = {}
        self._told: set[int] = set()  # the workers sent the stop signal
        self._stop = asyncio.Event()
        self._signal = signal.SIGTERM
        self._stopped_at = 0.0  # the first stop signal's, clock time
        self._gave_up = False
        self._silent = silent
        self._probe_every = probe_every
        self._start_up = start_up
        self._dotenv = dotenv
        # Each worker's spawn and last answer (none yet: starting), clock time.
        self._spawned: dict[int, float] = {}
        self._answered: dict[int, float] = {}

    async def run(self) -> int:
        """0 after a clean stop; 1 when workers kept exiting or had to be killed."""
        loop = asyncio.get_running_loop()
        signals = stop_signals()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop, sig)
        log.info(
            "starting worker processes",
            extra={
                "workers": self._count,
                "dedup_process": self._dedup_process,
                "runtime_dir": str(self._runtime_dir),
            },
        )
        if (held := held_stop()) is not None:  # came during the start-up, as PID 1
            self.stop(held)  # before any worker is spawned
        slots = [asyncio.create_task(self._keep(i), name=f"worker-{i}") for i in range(self._count)]
        # Off (0): a silent worker is left to the orchestrator's liveness probe, or to whoever
        # stopped it (a SIGSTOP for a debugger, a game day) to resume it.
        watchdog = asyncio.create_task(self._watch(), name="watchdog") if self._silent else None
        await self._stop.wait()
        if watchdog is not None:
            await cancel_and_wait(watchdog)
        deadline = loop.time() + self._grace + self._margin
        last = self._last_to_stop()
        if last:
            # The dedup process stops once the webhook workers have flushed what they took to the
            # ingest topic, so its drain outputs those records before it leaves its group: as a
            # single process flushes its ingest producer before its dedup stage drains. Not
            # later than the grace period's final phase: it needs that to commit and leave.
            await asyncio.wait(
                [s for i, s in enumerate(slots) if i not in last],
                timeout=StopBudget.plan(0.0, self._grace).inputs_by,
            )
            self._tell(last, self._signal)
        _, running = await asyncio.wait(slots, timeout=max(deadline - loop.time(), 0.0))
        killed = sorted(i for i, p in self._processes.items() if p.returncode is None)
        if killed:
            log.error(
                "workers still running after the grace period; killing them",
                extra={"workers": killed, "grace_s": self._grace},
            )
            for i in killed:
                with contextlib.suppress(ProcessLookupError):
                    self._processes[i].kill()
            await asyncio.wait(running, timeout=10)
        for sig in signals:
            loop.remove_signal_handler(sig)
        clean = not self._gave_up and all(c in _CLEAN_EXITS for c in self._stopped_with.values())
        log.info("all workers stopped", extra={"clean": clean})
        return 0 if clean else 1

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop every worker with `sig`, a dedup process last (see run).

        A repeated signal goes to every worker at once (each handles it once); a SIGHUP after
        the stop began does not: nobody sends it to hurry the stop. A terminal's hangup delivers
        it twice (bash hangs up its jobs, then the kernel the foreground group), and systemd's
        SendSIGHUP right after its SIGTERM. Nor does the first signal again within
        `SAME_STOP_SECONDS`: one stop delivered twice (a wrapper's, `timeout`'s).
        """
        now = self._clock()
        repeated = self._stop.is_set()
        if repeated and sig == signal.SIGHUP:
            return
        if repeated and sig == self._signal and now - self._stopped_at < SAME_STOP_SECONDS:
            return
        if not repeated:
            log.info("stopping worker processes", extra={"signal": sig.name})
            self._signal = sig
            self._stopped_at = now
            self._stop.set()
            self._share_deadline()
        last = [] if repeated else self._last_to_stop()
        self._tell([i for i in range(self._count) if i not in last], sig)

    def _share_deadline(self) -> None:
        """Tell the workers when the pod's grace period ends: a dedup process is signalled later.

        Its own grace period would start at its own signal, and the parent kills it at the pod's.
        """
        path = stop_by_file(self._runtime_dir)
        try:
            write_stop_by(path, time.monotonic() + self._grace)
        except OSError as exc:  # each worker then keeps to its own grace period
            log.warning("could not share the stop deadline", extra={"error": repr(exc)})

    def _last_to_stop(self) -> list[int]:
        """The workers stopped only after the others: the dedup process, if there is one."""
        count, dedup_process = self._count, self._dedup_process
        return [i for i in range(count) if stages_of(i, count, dedup_process) == "dedup"]

    def _tell(self, indices: list[int], sig: signal.Signals) -> None:
        """Send `sig` to these workers now, and to any of them spawned from now on."""
        self._told.update(indices)
        for index in indices:
            process = self._processes.get(index)
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        # Fresh for each spawn, a restart's too: the worker reads it from its start, then closes it.
        dotenv_fd = None if self._dotenv is None else dotenv_descriptor(self._dotenv)
        role = WorkerRole(
            index=index,
            count=self._count,
            runtime_dir=self._runtime_dir,
            parent_pid=os.getpid(),
            restarts=self._restarts[index],
            dedup_process=self._dedup_process,
            dotenv_fd=dotenv_fd,
        )
        try:
            # Spawned from this (the main) thread: a worker's PR_SET_PDEATHSIG follows this thread.
            process = await asyncio.create_subprocess_exec(
                *self._command,
                env={**os.environ, **role.env()},
                stdin=subprocess.DEVNULL,
                # Under the same number in the worker, as its role says.
                pass_fds=() if dotenv_fd is None else (dotenv_fd,),
                # A group of its own: a terminal's Ctrl-C reaches only the parent, which stops the
                # workers in two phases (a dedup process last); PDEATHSIG still ties them to it.
                process_group=0,
            )
        finally:
            if dotenv_fd is not None:  # the worker has its own copy once exec'd
                os.close(dotenv_fd)
        self._processes[index] = process
        self._spawned[index] = self._clock()
        self._answered.pop(index, None)  # its predecessor's
        log.info(
            "worker started",
            extra={
                "worker": index,
                "stages": role.stages,
                "pid": process.pid,
                "restarts": self._restarts[index],
            },
        )
        if index in self._told:  # the stop came while it was being spawned
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(self._signal)
        return process

    async def _watch(self) -> None:
        """Until the stop: kill each worker silent too long (silence.py), so it is restarted."""
        role = WorkerRole(index=0, count=self._count, runtime_dir=self._runtime_dir, parent_pid=0)
        pod = PodView(role.sockets)
        try:
            while True:
                await asyncio.sleep(self._probe_every)
                # The injected clock (the loop's own by default): a test holds it over start-ups.
                asked = self._clock()
                for worker, answer in (await pod.ask("/healthz")).items():
                    # Any answer will do (a 503 too): this catches a worker that cannot answer.
                    index = int(worker)
                    spawned = self._spawned.get(index)
                    if spawned is None:  # killed, its successor not spawned yet
                        continue
                    if answer is not None:
                        self._answered[index] = asked
                        continue
                    answered = self._answered.get(index)
                    silence = silent_past_bound(
                        spawned, answered, asked, self._silent, self._start_up
                    )
                    if silence is not None:
                        self._kill_silent(index, silence)
        finally:
            await pod.close()

    def _kill_silent(self, index: int, silence: Silence) -> None:
        process = self._processes.get(index)
        if process is None or process.returncode is not None:
            return
        log.error(
            "worker answered no probe; killing it to restart it",
            extra={
                "worker": index,
                "pid": process.pid,
                "silent_s": round(silence.quiet, 1),
                "starting": silence.starting,
            },
        )
        del self._spawned[index]  # until its successor's spawn: killed once
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    async def _keep(self, index: int) -> None:
        """Run worker `index` until the stop; restart it whenever it exits before that."""
        try:
            await self._keep_running(index)
        except Exception:  # e.g. the worker could not be spawned: the pod would run short
            log.critical("cannot run a worker process; stopping the pod", exc_info=True)
            self._gave_up = True
            self.stop()

    async def _keep_running(self, index: int) -> None:
        while not self._stop.is_set():
            process = await self._spawn(index)
            code = await process.wait()
            if self._stop.is_set():
                self._stopped_with[index] = code
                log.info("worker stopped", extra={"worker": index, **exit_fields(code)})
                return
            decision = self._budget.exited(index, self._clock())
            if isinstance(decision, GiveUp):
                log.critical(
                    "worker processes keep exiting; stopping the pod",
                    extra={
                        "worker": index,
                        "exits": decision.exits,
                        "period_s": decision.period,
                        **exit_fields(code),
                    },
                )
                self._gave_up = True
                self.stop()
                return
            self._restarts[index] += 1
            log.error(
                "worker exited unexpectedly; restarting it",
                extra={
                    "worker": index,
                    "pid": process.pid,
                    "restart_in_s": decision.delay,
                    "restarts": self._restarts[index],
                    **exit_fields(code),
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), decision.delay)


def run_parent(settings: Settings, count: int, dotenv: Mapping[str, str | None]) -> int:
    """Supervise `count` workers until SIGTERM, SIGINT or SIGHUP; the process's exit code.

    `count` includes the dedup stage's own process when BRIDGE_DEDUP__OWN_PROCESS is set;
    `dotenv`: the `.env` variables `settings` were read from (`Loaded.dotenv`).
    """
    http = settings.http
    for port in (http.port, http.admin_port):
        # Port 0 (the admin port's, in tests) is any free port: nobody else's.
        problem = listen.taken(http.host, port) if port else None
        if problem is not None:
            # The workers would share it (SO_REUSEPORT) with whatever holds it: one process would
            # fail to bind, so the pod refuses as one process does.
            log.error(
                "cannot listen (BRIDGE_HTTP__HOST, BRIDGE_HTTP__PORT, BRIDGE_HTTP__ADMIN_PORT)",
                extra={
                    "host": http.host,
                    "port": http.port,
                    "admin_port": http.admin_port,
                    "error": str(problem),
                },
            )
            return 1
    runtime_dir = Path(tempfile.mkdtemp(prefix="pinecall-bridge-"))
    last = WorkerRole(index=count - 1, count=count, runtime_dir=runtime_dir, parent_pid=0)
    longest = last.socket(last.index)
    if len(os.fsencode(longest)) > _MAX_UNIX_PATH:
        log.error("TMPDIR is too long for the workers' unix sockets", extra={"path": str(longest)})
        shutil.rmtree(runtime_dir, ignore_errors=True)
        return 1
    try:
        # Each worker's settings are read with these, never the file: one restarted after `.env`
        # changed would run other settings than its siblings (and the parent's checks).
        parent = Parent(
            count,
            runtime_dir,
            settings.shutdown.grace_seconds,
            dedup_process=settings.dedup.own_process,
            silent=settings.http.worker_silence_seconds,
            dotenv=dotenv,
        )
        return asyncio.run(parent.run())
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
