"""The `pinecall-bridge` command: run, check, send."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, NoReturn, get_args

from bridge.stopsignals import hold_until_handled, interrupt_on_stop

# First: the imports below are most of a start-up (seconds on a throttled CPU), and PID 1 loses
# a stop signal that comes before a handler (bridge/stopsignals.py).
hold_until_handled()

from bridge import jsoncodec  # noqa: E402
from bridge.argtypes import port, positive, rate  # noqa: E402
from bridge.config import (  # noqa: E402
    ConfigError,
    Loaded,
    Settings,
    describe,
    load,
    log_setting_warnings,
    log_unknown_variables,
    overridden_variables,
    setting_warnings,
    unknown_variables,
)
from bridge.normalise.event import Channel  # noqa: E402
from bridge.secretfiles import has_control_character, named_path, secret_origins  # noqa: E402
from bridge.sources.signature import signature_header  # noqa: E402

EXIT_CONFIG = 2


def _settings_or_exit(
    *,
    unknown_is_invalid: bool = False,
    serving: bool = True,
    dotenv: Mapping[str, str | None] | None = None,
) -> Loaded:
    """The settings, or exit 2 listing every problem, unknown `BRIDGE_*` variables first: a typo
    is often why a setting looks missing. `serving=False`: a tool's, which needs no webhook secret;
    `dotenv`: `.env` as read already (`load`)."""
    try:
        loaded = load(serving=serving, dotenv=dotenv)
    except ConfigError as exc:
        _exit_invalid(exc)
    problems = unknown_variables(os.environ, loaded.dotenv) if unknown_is_invalid else []
    if problems:
        _exit_with(problems)
    return loaded


def _exit_invalid(exc: ConfigError) -> NoReturn:
    """Exit 2 listing the problems of a failed load, unknown `BRIDGE_*` variables first."""
    # None: `.env` could not be read, which is the problem named.
    unknown = unknown_variables(os.environ, exc.dotenv) if exc.dotenv is not None else []
    _exit_with(unknown + exc.problems)


def _exit_with(problems: list[str]) -> NoReturn:
    print("pinecall-bridge: invalid configuration:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def _configure_logging(loaded: Loaded) -> None:
    """Log as the settings say, then warn of each unknown `BRIDGE_*` variable: a likely typo."""
    from bridge import logsetup

    logsetup.configure(loaded.settings.log.level, loaded.settings.log.format)
    log_unknown_variables(loaded.dotenv)


def _run(_: argparse.Namespace) -> int:
    from bridge.workers.role import EXIT_NO_DOTENV, DotenvFileError, WorkerRole, read_dotenv

    role = WorkerRole.from_env(os.environ)
    # A worker takes the `.env` its parent read at its start: the file may have changed since.
    dotenv = None
    if role is not None:
        try:
            dotenv = read_dotenv(role.dotenv_fd)
        except DotenvFileError as exc:
            # Before the settings, so before logging is set up: stderr, as a configuration error.
            print(f"pinecall-bridge: worker {role.index}: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_NO_DOTENV) from None
    loaded = _settings_or_exit(dotenv=dotenv)
    settings = loaded.settings
    from bridge import logsetup
    from bridge.connlimit import raise_open_files_limit
    from bridge.gctuning import tune_for_serving
    from bridge.service import serve

    # After the imports: the modules' objects are most of what a serving process holds.
    tune_for_serving()

    # A container's soft limit is often 1024 under a far higher hard one: raised, the cap on
    # HTTP connections (BRIDGE_HTTP__MAX_CONNECTIONS) is not lowered to fit it.
    open_files = raise_open_files_limit()
    if role is not None:  # one of several worker processes, started by the parent below
        from bridge.workers.worker import serve_worker

        logsetup.configure(settings.log.level, settings.log.format, {"worker": role.index})
        _run_loop(serve_worker(settings, role, loaded.dotenv))
        _exit_stopped()
    _configure_logging(loaded)
    logging.getLogger("bridge.connlimit").info(
        "open files limit", extra={"soft": open_files[0], "hard": open_files[1]}
    )
    # Only where webhooks are taken: once, by the parent of any workers.
    log_setting_warnings(loaded)
    if settings.http.workers != 1 or settings.dedup.own_process:
        processes = _workers(settings) + settings.dedup.own_process
        if processes > 1:
            from bridge.workers.parent import run_parent

            return run_parent(settings, processes, loaded.dotenv)
    _run_loop(serve(settings, loaded.dotenv))
    return 0


def _workers(settings: Settings) -> int:
    """BRIDGE_HTTP__WORKERS as a count (0: one per CPU available); only Linux runs a parent."""
    from bridge.workers.cpus import resolve_workers

    if not sys.platform.startswith("linux"):
        print(
            "pinecall-bridge: BRIDGE_HTTP__WORKERS other than 1, and BRIDGE_DEDUP__OWN_PROCESS,"
            " need Linux (SO_REUSEPORT balancing, PR_SET_PDEATHSIG)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_CONFIG)
    workers = resolve_workers(settings.http.workers, dedup_process=settings.dedup.own_process)
    logging.getLogger("bridge.workers").info(
        "worker processes",
        extra={
            "workers": workers,
            "setting": settings.http.workers,
            "dedup_own_process": settings.dedup.own_process,
        },
    )
    return workers


def _exit_stopped() -> NoReturn:
    """Exit a worker whose bridge has stopped, without the interpreter's teardown.

    Everything it took is in Kafka or refused by then, and its loop is closed: the teardown
    (1.5-2 s measured, 2 busy cores) only ate into its supervisor's margin after the grace period
    (bridge/stopbudget.py's EXIT_SECONDS), to be killed in it.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on every platform)
        asyncio.run(main)
    else:
        uvloop.run(main)


def _check(_: argparse.Namespace) -> int:
    # An unknown variable fails the check: a CI gate must catch a typo, which `run` only warns of.
    loaded = _settings_or_exit(unknown_is_invalid=True)
    settings = loaded.settings
    print("configuration is valid:", file=sys.stderr)  # stdout is the settings as JSON, for tools
    print(_settings_json(describe(settings)))
    for name, origin in secret_origins(os.environ, loaded.dotenv).items():
        print(f"{name}: {origin}", file=sys.stderr)  # where from, never the value
    overridden = overridden_variables(os.environ, loaded.dotenv)
    for warning in [*overridden, *setting_warnings(loaded)]:
        print(f"warning: {warning}", file=sys.stderr)
    k = settings.kafka
    # Each of the three limits is refused at start unless it fits with the envelope (config.py).
    print(
        f"record limits: webhook bodies up to {settings.webhook.max_body_bytes} bytes, feed"
        f" frames up to {settings.websocket.max_frame_bytes} and call-log entries up to"
        f" {settings.sse.max_event_bytes} fit in Kafka records of up to {k.max_request_bytes}"
        " bytes (every topic needs max.message.bytes >= that)",
        file=sys.stderr,
    )
    _check_memory(settings)
    _check_http_parser()
    return 0


def _check_http_parser() -> None:
    """The HTTP parser `run` would serve with, as its `listening` line says; a warning if not
    llhttp."""
    from bridge.http_timeouts import NOT_LLHTTP, request_parser

    parser, why_not_c = request_parser()
    print(f"http parser: {parser}", file=sys.stderr)
    if why_not_c is not None:
        print(f"warning: {NOT_LLHTTP} (http_parser={parser}: {why_not_c})", file=sys.stderr)


def _settings_json(described: dict[str, Any]) -> str:
    """The settings as compact JSON, a byte or entry limit past 64 bits (1e20: as good as none,
    and taken) included: orjson cannot write one, and `check` said valid, then a traceback."""
    try:
        return jsoncodec.dumps(described).decode()
    except jsoncodec.JSONEncodeError:
        # A float that is no number as orjson writes it (null), not json's `Infinity` (no JSON):
        # the same settings print alike, whichever encoder writes them.
        return json.dumps(
            _finite(described), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )


def _finite(value: Any) -> Any:
    """`value` with each infinite or NaN float in it as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _check_memory(settings: Settings) -> None:
    """The dedup window's worst case here, for BRIDGE_TOPICS__INGEST_PARTITIONS (check reads no
    topic; `run` says it again for the topic's own count)."""
    from bridge.dedup.memoryfit import WindowFit, read_limit

    limit = read_limit()
    if limit.problem is not None:
        print(
            f"warning: could not read the container's memory limit ({limit.source}:"
            f" {limit.problem}) to size the dedup window against",
            file=sys.stderr,
        )
        return
    fit = WindowFit(
        settings.topics.ingest_partitions,
        settings.dedup.max_entries_per_partition,
        limit.limit,
        _pod_processes(settings),
        settings.dedup.restore_concurrency,
    )
    warning = fit.warning()
    print(f"warning: {warning}" if warning else f"dedup memory: {fit.summary()}", file=sys.stderr)


def _pod_processes(settings: Settings) -> int:
    """The processes `run` would start here, each with memory of its own: the workers (0: one per
    CPU available, as `run` counts them; it refuses 0 off Linux) and the dedup stage's own."""
    workers = settings.http.workers
    if workers == 0 and hasattr(os, "sched_getaffinity"):
        from bridge.workers.cpus import resolve_workers

        # Counted as 1, a pod of several workers was said to fit a limit it outgrows.
        workers = resolve_workers(0, dedup_process=settings.dedup.own_process)
    return max(workers, 1) + settings.dedup.own_process


def sample_event() -> dict[str, object]:
    """A call-log entry as Pinecall writes it, unique per second so repeated sends all land."""
    now = time.time()
    return {
        "seq": int(now) % 1_000_000 + 1,
        "ts": now,
        "call": "CA_demo",
        "agent": "support",
        "type": "call.started",
        "ephemeral": False,
        "data": {"from": "+15550100", "to": "+15550199", "direction": "inbound"},
    }


def _secret_arguments(parser: argparse.ArgumentParser) -> None:
    """--secret and --secret-file, one or the other; without either, the configured secret."""
    given = parser.add_mutually_exclusive_group()
    given.add_argument(
        "--secret",
        help="the webhook secret itself: seen by anyone who can list processes (ps) and kept in"
        " the shell's history; prefer --secret-file or the default, the first of"
        " BRIDGE_WEBHOOK__SECRETS (also read from BRIDGE_SECRETS_DIR or .env)",
    )
    given.add_argument(
        "--secret-file",
        metavar="PATH",
        help="read the webhook secret from this file (or /dev/stdin); surrounding whitespace is"
        " dropped",
    )


def _given_secret(args: argparse.Namespace) -> str | None:
    """The webhook secret the command line gives: --secret's, or --secret-file's text (its
    surrounding whitespace off, as the setting's); None when neither is given."""
    if args.secret_file is None:
        return _one_secret(args.secret, "--secret")
    try:
        # -sig: a leading BOM (a Windows editor's) is no part of the secret; strip() keeps it.
        with open(args.secret_file, encoding="utf-8-sig") as file:
            secret = file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The path and the reason only: the bytes may be the secret.
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        # A secret typed where its path goes (`--secret-file s3cret`) is named by no error: the
        # path only when real, as the path settings' (bridge/redaction.py's shown_path).
        shown = named_path(args.secret_file)
        print(f"pinecall-bridge: --secret-file {shown}: {reason}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    if not secret:
        print(f"pinecall-bridge: --secret-file {args.secret_file} is empty", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return _one_secret(secret, f"--secret-file {args.secret_file}")


def _one_secret(secret: str | None, given: str) -> str | None:
    """`secret`, or exit 2 when no bridge could verify it: BRIDGE_WEBHOOK__SECRETS splits at
    commas and refuses a control character (the mounted list of a rotation given whole)."""
    if secret is not None and ("," in secret or has_control_character(secret)):
        # Put, Pinecall would sign every webhook with it: each answered 401, final for Pinecall.
        print(
            f"pinecall-bridge: {given} holds a comma or a line break (or another control"
            " character): give one secret, not a list (the bridge splits"
            " BRIDGE_WEBHOOK__SECRETS at commas, so it would verify no signature made with it)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_CONFIG)
    return secret


def _send(args: argparse.Namespace) -> int:
    body = args.body.encode() if args.body else jsoncodec.dumps(sample_event())
    secret = _given_secret(args)
    if secret is None:
        # A tool's settings: the serving refusal of a missing secret names no option of send's.
        loaded = _settings_or_exit(serving=False)
        settings = loaded.settings
        _configure_logging(loaded)
        secret = settings.webhook.signing_secret
        if not secret and not settings.webhook.allow_unsigned:
            print(
                "pinecall-bridge send: no webhook secret to sign with: pass --secret-file PATH"
                " (or --secret), or set BRIDGE_WEBHOOK__SECRETS; for local testing only,"
                " BRIDGE_WEBHOOK__ALLOW_UNSIGNED=true",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    signature = signature_header(secret.encode(), body, bare=args.bare)
    if args.curl:
        print(
            f"curl -sS -X POST {shlex.quote(args.url)} -H 'Content-Type: application/json' "
            f"-H {shlex.quote('X-Pinecall-Signature: ' + signature)} "
            f"--data-raw {shlex.quote(body.decode())}"
        )
        return 0
    request = urllib.request.Request(
        args.url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Pinecall-Signature": signature},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.status, response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode())
        return 1
    except urllib.error.URLError as exc:
        print(f"could not reach {args.url}: {exc.reason}", file=sys.stderr)
        return 1


def _webhooks(args: argparse.Namespace) -> int:
    # Only `register` sends a secret (Pinecall signs `test` with the one it keeps), and only
    # when none is passed does it need the setting's.
    given = _given_secret(args) if args.action == "register" else None
    loaded = _settings_or_exit(serving=args.action == "register" and given is None)
    settings = loaded.settings
    _configure_logging(loaded)
    if settings.pinecall.api_key is None:  # every call of the webhook API is authenticated
        print(
            f"pinecall-bridge: webhooks {args.action} needs BRIDGE_PINECALL__API_KEY",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    from bridge.sources.egress import pinecall_session
    from bridge.sources.registration import RegistrationError, WebhookRegistry

    async def act() -> Any:
        async with pinecall_session(settings.pinecall.api_url) as session:
            registry = WebhookRegistry(session, settings.pinecall)
            if args.action == "show":
                current = await registry.current()
                return None if current is None else dataclasses.asdict(current)
            if args.action == "delete":
                return {"deleted": await registry.delete()}
            if args.action == "test":
                return await registry.test()
            secret = given or settings.webhook.signing_secret
            if not secret:
                raise RegistrationError(
                    "no secret: pass --secret-file or set BRIDGE_WEBHOOK__SECRETS"
                )
            done = await registry.ensure(args.url, secret, replace=args.replace)
            previous = None if done.previous is None else dataclasses.asdict(done.previous)
            return {"url": args.url, "previous": previous, "took_over": done.took_over}

    try:
        print(jsoncodec.dumps(asyncio.run(act())).decode())
    except RegistrationError as exc:
        print(f"pinecall-bridge: {exc}", file=sys.stderr)
        return 1
    return 0


def _kafka_or_exit(settings: Settings, run: Callable[[], int], *, reads: bool = False) -> int:
    """Run a command that needs Kafka: a Kafka error is one clear line, exit 1, no traceback.

    `reads`: a refused ACL is a missing read right (tail), named with where the ACLs are listed."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from bridge.sink.acls import read_refused

    try:
        return run()
    except KafkaError as exc:
        servers = ",".join(settings.kafka.bootstrap_servers)
        refused = read_refused(exc, settings.dedup.group) if reads else None
        if refused is not None:
            print(f"refused by Kafka at {servers}: {refused}", file=sys.stderr)
            return 1
        what = "cannot reach" if isinstance(exc, KafkaConnectionError) else "failed with"
        print(
            f"{what} Kafka at {servers} (BRIDGE_KAFKA__BOOTSTRAP_SERVERS): {exc!r}",
            file=sys.stderr,
        )
        return 1


def _tail(args: argparse.Namespace) -> int:
    if args.to_end and not (args.from_beginning or args.since is not None):
        # From the end to the end: it would print nothing, as if the event were nowhere.
        print("pinecall-bridge tail: --to-end needs --from-beginning or --since", file=sys.stderr)
        return EXIT_CONFIG
    loaded = _settings_or_exit(serving=False)
    settings = loaded.settings
    _configure_logging(loaded)
    from bridge.tail import TailConsole, TailFilter, tail

    topics = args.topic or [settings.topics.events, settings.topics.alerts]
    if args.everywhere:
        t = settings.topics
        topics = [t.ingest, t.events, t.alerts, *([t.ephemeral] if t.ephemeral else []), t.dlq]
        # A routing rule's topic is an output topic too: left out, an ingest copy bound for it,
        # decided, with no output line beside it read as "decided and none published".
        rules = [rule.topic for rule in settings.routing.rules]
        topics = list(dict.fromkeys([*topics, *rules]))
    wanted = TailFilter(type_glob=args.type, call=args.call, event_id=args.id)

    def run() -> int:
        asyncio.run(
            tail(
                settings,
                topics,
                wanted,
                from_beginning=args.from_beginning,
                since=args.since,
                to_end=args.to_end,
                limit=args.limit,
                console=TailConsole(),
            )
        )
        return 0

    return _kafka_or_exit(settings, run, reads=True)


def _backfill(args: argparse.Namespace) -> int:
    loaded = _settings_or_exit(serving=False)
    settings = loaded.settings
    _configure_logging(loaded)
    from rich.console import Console

    from bridge.backfill import run_backfill

    if args.before is not None and args.since is None:
        print("backfill: --before goes with --since", file=sys.stderr)
        return 2
    return _kafka_or_exit(
        settings,
        lambda: run_backfill(
            settings, args.call or [], Console(), since=args.since, before=args.before
        ),
    )


def _redrive(args: argparse.Namespace) -> int:
    loaded = _settings_or_exit(serving=False)
    settings = loaded.settings
    _configure_logging(loaded)
    if args.until is not None and args.until < args.since:
        print("pinecall-bridge redrive: --until is before --since", file=sys.stderr)
        return EXIT_CONFIG
    from rich.console import Console

    from bridge.deadletter import REASONS, Selection, unknown_reasons
    from bridge.redrive import run_redrive

    unknown = unknown_reasons(args.reason or ())
    if unknown:
        # Not an error: dead letters of an older version may carry reasons this one dropped.
        print(
            f"pinecall-bridge redrive: warning: this version writes no dead letter with reason"
            f" {', '.join(map(repr, unknown))} (only an older one may have); it writes"
            f" {', '.join(sorted(REASONS))}",
            file=sys.stderr,
        )
    selection = Selection(
        since=args.since,
        until=args.until,
        reasons=frozenset(args.reason or ()),
        channels=frozenset(args.channel or ()),
    )
    return _kafka_or_exit(
        settings, lambda: run_redrive(settings, selection, Console(), dry_run=args.dry_run)
    )


def _point_in_time(*, future: bool) -> Callable[[str], float]:
    """An argparse type of the forms parse_since reads; `future`: a later time too (an end, whose
    read stops at the topic's end anyway)."""

    def parse(text: str) -> float:
        from bridge.timespec import parse_since

        try:
            return parse_since(text, time.time(), future=future)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _add_since(where: argparse._ActionsContainer, what: str, *, required: bool = False) -> None:
    """A `--since` of the forms parse_since reads, helped as "<what> since then: <the forms>"."""
    where.add_argument(
        "--since",
        type=_point_in_time(future=False),
        required=required,
        help=f"{what} since then: epoch seconds, an ISO-8601 time (UTC unless it says) or a span"
        " back from now (30m, 2h30m, 7d)",
    )


def _simulate(args: argparse.Namespace) -> int:
    from bridge.simulator.command import main as simulate

    return simulate(args.args)


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo.runner import DemoOptions, run_demo
    from bridge.tail import EscapingConsole

    options = DemoOptions(
        calls=args.calls if args.calls is not None else (50 if args.headless else 0),
        rate=args.rate,
        http_port=args.http_port,
        simulator_port=args.simulator_port,
        seed=args.seed,
        headless=args.headless,
    )
    try:
        # It shows callers' words as tail does: a terminal lacking one of their characters
        # escapes it.
        return asyncio.run(run_demo(options, EscapingConsole()))
    except ConfigError as exc:  # its settings load once the simulator is up (its URLs)
        _exit_invalid(exc)


def _version() -> str:
    try:
        return importlib.metadata.version("pinecall-bridge")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        from bridge import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinecall-bridge",
        description="Pinecall events → CloudEvents → Kafka. Configured by BRIDGE_* variables.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "run",
        help="run the daemon",
        description="Serve webhooks and read the configured sources until SIGTERM or SIGINT."
        " Exit 2 on invalid configuration; unknown BRIDGE_* variables are logged as warnings.",
    ).set_defaults(func=_run)
    commands.add_parser(
        "check",
        help="validate the configuration (exit 0 valid, 2 invalid)",
        description="Validate the BRIDGE_* variables (and .env) without starting. Valid: the"
        " effective settings as JSON on stdout, secrets masked, exit 0. Invalid, or a BRIDGE_*"
        " variable no setting reads: each problem on stderr, exit 2.",
    ).set_defaults(func=_check)
    send = commands.add_parser("send", help="sign an event and POST it to a bridge")
    send.add_argument(
        "--url",
        default="http://127.0.0.1:8080/webhooks/pinecall",
        help="the bridge's webhook URL (default: %(default)s)",
    )
    _secret_arguments(send)
    send.add_argument("--body", help="raw JSON to send (default: a sample call.started entry)")
    send.add_argument("--bare", action="store_true", help="bare hex signature, not sha256=<hex>")
    send.add_argument("--curl", action="store_true", help="print the equivalent curl command")
    send.set_defaults(func=_send)

    hooks = commands.add_parser(
        "webhooks", help="the organisation's Pinecall webhook: register, show, test or delete it"
    )
    hook_actions = hooks.add_subparsers(dest="action", required=True)
    register = hook_actions.add_parser(
        "register", help="point it at a URL (refused if it points elsewhere, unless --replace)"
    )
    register.add_argument("--url", required=True, help="the bridge's public webhook URL")
    _secret_arguments(register)
    register.add_argument(
        "--replace", action="store_true", help="take over a webhook that points elsewhere"
    )
    hook_actions.add_parser("show", help="where it points, and whether its posts are signed")
    hook_actions.add_parser("test", help="have Pinecall post a signed webhook.test, and wait")
    hook_actions.add_parser("delete", help="forget it: the organisation's alerts go nowhere")
    hooks.set_defaults(func=_webhooks)

    tail = commands.add_parser("tail", help="print the events on the bridge's Kafka topics")
    where = tail.add_mutually_exclusive_group()
    where.add_argument("--topic", action="append", help="default: the events and alerts topics")
    # A dead letter's are those its event would have had, where its value tells them.
    tail.add_argument("--type", default="*", help="type glob, e.g. 'call.*'")
    tail.add_argument(
        "--call", help="only this call id (a dead letter: its event's, else one that mentions it)"
    )
    tail.add_argument(
        "--id",
        help="only this event id (a dead letter: its event's, its own dlq:<sha256>, else one that"
        " mentions it)",
    )
    where.add_argument(
        "--everywhere",
        action="store_true",
        help="the ingest, output and dead-letter topics: where did an event go?",
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="not only new records")
    _add_since(start, "records written")
    tail.add_argument(
        "--to-end",
        action="store_true",
        help="exit 0 once every partition is read to the end it had at the start (committed"
        " records only: an open transaction's are not waited for)",
    )
    tail.add_argument("--limit", type=positive, help="stop after this many records (1 or more)")
    tail.set_defaults(func=_tail)

    demo = commands.add_parser(
        "demo", help="simulated Pinecall → the bridge (all three channels) → Kafka, on screen"
    )
    demo.add_argument("--headless", action="store_true", help="no live view: run, then summarise")
    # Checked here: a bad one was refused only after the bridge had started, or never.
    demo.add_argument(
        "--calls", type=positive, help="calls to play, 1 or more (default: forever; headless: 50)"
    )
    demo.add_argument("--rate", type=rate, default=40.0, help="events per second (default 40)")
    demo.add_argument(
        "--http-port",
        type=port,
        default=8080,
        help="the bridge's HTTP port (default: %(default)s)",
    )
    demo.add_argument(
        "--simulator-port",
        type=port,
        default=8765,
        help="the simulated Pinecall's port (default: %(default)s)",
    )
    demo.add_argument(
        "--seed", type=int, help="seed the simulated calls, to play the same ones again"
    )
    demo.set_defaults(func=_demo)

    backfill = commands.add_parser(
        "backfill",
        help="publish calls' stored event logs again (idempotent: the dedup drops repeats)",
        description="Read each call's stored log (--call, or every call the call list shows"
        " started --since) and submit its entries to the ingest topic through the daemon's path;"
        " the dedup stage drops repeats. Exit 0 done, 1 a call, the call list or Kafka failed"
        " (or the ingest topic does not exist), 2 usage, 130 interrupted (Ctrl-C).",
    )
    which = backfill.add_mutually_exclusive_group(required=True)
    which.add_argument("--call", action="append", help="a call id, e.g. CA_8f4a2c (repeatable)")
    _add_since(which, "every call the call list shows started")
    backfill.add_argument(
        "--before",
        metavar="CALL",
        help="with --since: only calls the list shows before this call id (where a run cut"
        " short by the list's page cap says to go on)",
    )
    backfill.set_defaults(func=_backfill)

    redrive = commands.add_parser(
        "redrive",
        help="offer dead letters the bridge now reads to the ingest stage again (idempotent)",
        description="Read the dead-letter topic (BRIDGE_TOPICS__DLQ) from --since to its end and"
        " submit each dead letter the bridge now reads to the ingest topic, with its first"
        " channel and receipt time. Still unrecognised ones and notes are counted, never written"
        " again. Exit 0 done, 1 Kafka failed (or a topic does not exist), 2 usage, 130"
        " interrupted (Ctrl-C).",
    )
    _add_since(redrive, "dead letters written", required=True)
    redrive.add_argument(
        "--until",
        type=_point_in_time(future=True),
        help="and up to then (the same forms, or a later time)",
    )
    redrive.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        # Any text: a dead-letter topic keeps what older versions wrote, under their reasons.
        help="only this pinecall-dlq-reason (repeatable); any text, for reasons an older"
        " version wrote",
    )
    redrive.add_argument(
        "--channel",
        action="append",
        choices=get_args(Channel),
        help="only dead letters that came through this channel (repeatable)",
    )
    redrive.add_argument(
        "--dry-run", action="store_true", help="read and classify, publish nothing"
    )
    redrive.set_defaults(func=_redrive)

    # The simulator parses its own many options; this entry hands them over untouched.
    simulate = commands.add_parser(
        "simulate",
        help="run a local stand-in for Pinecall (see `simulate --help`)",
        add_help=False,
        prefix_chars="\0",
    )
    simulate.add_argument("args", nargs=argparse.REMAINDER, help="the simulator's own options")
    simulate.set_defaults(func=_simulate)
    _describe_by_help(parser)
    return parser


def _describe_by_help(parser: argparse.ArgumentParser) -> None:
    """Give each subcommand without a description its one-line help as one, for its own --help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                command = action.choices[choice.dest]
                if command.description is None:
                    command.description = choice.help
                _describe_by_help(command)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.func is not _run:  # `run` acts on a held stop signal itself, as it stops
            interrupt_on_stop()
        code: int = args.func(args)
    except KeyboardInterrupt:
        # Ctrl-C is the operator's own: one line, no traceback. What backfill or redrive
        # submitted stays in the ingest topic, and a rerun adds no doubles (the dedup stage).
        print(f"pinecall-bridge {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    raise SystemExit(main())
