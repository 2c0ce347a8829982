"""One worker process: a Bridge, and its own probes and metrics on a unix socket.

A worker taking webhooks serves the shared port; the dedup stage's own process serves none.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
from collections.abc import Callable, Mapping

from aiohttp import web

from bridge.app import probe_routes
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.service import Bridge, reloaded_secret_files, run_until_stopped
from bridge.workers.pod import PodView
from bridge.workers.role import WorkerRole, read_stop_by

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@functools.cache
def prctl() -> Callable[..., int]:
    """libc's prctl, looked up on first use (not at import: this module loads off Linux too).

    Call it before a fork whose child calls die_with_parent: in a threaded parent, dlopen/dlsym
    after the fork may wait for ever on a loader lock another thread held at the fork.
    """
    function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return function


def die_with_parent(parent_pid: int) -> bool:
    """Have Linux send this process SIGTERM (a graceful stop) when its parent dies.

    False when the parent is gone already (this process was re-parented before asking).
    """
    if prctl()(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == parent_pid


def worker_settings(settings: Settings, role: WorkerRole) -> Settings:
    """Worker 0 registers the webhook at start-up (if asked); the others never do.

    A worker may run a dedup stage of its own, so a dedup instance id gets the worker's index.
    """
    update: dict[str, object] = {}
    if role.index != 0 and settings.pinecall.register_webhook:
        update["pinecall"] = settings.pinecall.model_copy(update={"register_webhook": False})
    dedup: dict[str, object] = {}
    if settings.dedup.instance_id is not None:
        # Unique among the pod's workers, and kept by a restarted worker (same index), which
        # so aborts the transaction its predecessor left open.
        dedup["instance_id"] = f"{settings.dedup.instance_id}-w{role.index}"
    if role.count > 1 and not role.dedup_process and settings.dedup.keep_revoked_seconds is None:
        # Every worker a member: one could keep a partition's window while another owns it,
        # past the pod's memory budget (memoryfit counts each partition once). Only when set.
        dedup["keep_revoked_seconds"] = 0.0
    if dedup:
        update["dedup"] = settings.dedup.model_copy(update=dedup)
    return settings.model_copy(update=update) if update else settings


async def serve_worker(
    settings: Settings, role: WorkerRole, dotenv: Mapping[str, str | None]
) -> None:
    """Run one worker until a stop signal (or its parent's death), then stop gracefully;
    `dotenv`: the `.env` variables the settings were read from (`Loaded.dotenv`)."""
    if not die_with_parent(role.parent_pid):
        log.error("the supervisor is gone before this worker started; exiting")
        raise SystemExit(1)
    metrics = Metrics()
    metrics.worker_restarts.inc(role.restarts)
    pod = PodView(role.sockets, serving=role.serving)
    bridge = Bridge(
        worker_settings(settings, role),
        metrics,
        probes=pod.routes(),
        reuse_port=True,
        stages=role.stages,
        pod_processes=role.count,
        # The last worker always runs the dedup stage: it alone says the window's fit.
        memory_check=role.index == role.count - 1,
        secret_files=reloaded_secret_files(dotenv),
        # A restarted worker's siblings serve meanwhile: bound before it is ready, it took its
        # share of new connections only to answer each 503 while its producer started. At the
        # pod's first start every worker binds at once (the pod is unready until all are).
        listen_when_ready=role.restarts > 0 and role.stages != "dedup",
    )
    own = web.Application()
    own.add_routes(probe_routes(bridge.readiness, metrics))
    runner = web.AppRunner(own, handle_signals=False, access_log=None)
    await runner.setup()
    path = role.socket(role.index)
    path.unlink(missing_ok=True)  # left by this worker's previous life
    await web.UnixSite(runner, str(path)).start()
    try:
        await run_until_stopped(bridge, stop_by=lambda: read_stop_by(role.stop_by_file))
    finally:
        await pod.close()
        await runner.cleanup()
