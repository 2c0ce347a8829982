"""`python -m chaos [--only NAME ...]`: run the fault matrix, (re)write docs/reliability.md."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from chaos.checker import Counts
from chaos.harness import Check, Context, Outcome, run_scenario
from chaos.report import embedded, merge, render, row
from chaos.scenarios import SCENARIOS
from tests.integration.cluster import PORTS

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("chaos")


def commit(root: Path = ROOT, written: Path | None = None) -> str:
    """HEAD's short hash, `+uncommitted` if a tracked file other than `written` is changed.

    `written` is the document a run rewrites: an earlier `--only` run's rows in it are results,
    not code, and counting them made every row after the first one `+uncommitted`.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    status = ["status", "--porcelain", "--untracked-files=no", "--", "."]
    if written is not None and written.resolve().is_relative_to(root.resolve()):
        status.append(f":(exclude,top){written.resolve().relative_to(root.resolve())}")
    return head + ("+uncommitted" if git(*status) else "")


async def run(names: list[str], ctx: Context) -> list[Outcome]:
    outcomes = []
    for name in names:
        log.info("scenario %s: starting", name)
        started = time.monotonic()
        try:
            outcome = await run_scenario(SCENARIOS[name], ctx)
        except Exception as exc:  # a scenario that breaks is a row that says so, not a lost run
            traceback.print_exc()
            empty = Counts(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            outcome = Outcome(name, "the scenario itself failed", empty, 0.0)
            said = " ".join([repr(exc)[:300], *getattr(exc, "__notes__", [])])
            outcome.checks.append(Check("scenario ran to the end", False, said))
        outcome.seconds = time.monotonic() - started
        log.info("scenario %s: %s %s", name, outcome.verdict, outcome.failures)
        outcomes.append(outcome)
    return outcomes


def base_port(text: str) -> int:
    """`--base-port`: a port from which the cluster's PORTS consecutive ones all exist."""
    port = int(text)  # argparse words a ValueError as an invalid value
    if not 1024 <= port <= 65536 - PORTS:
        raise argparse.ArgumentTypeError(
            f"{port}: the cluster takes {PORTS} ports from it, so 1024-{65536 - PORTS}"
        )
    return port


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="these scenarios")
    parser.add_argument("--rate", type=float, default=250.0, help="webhook events/s")
    parser.add_argument("--scale", type=float, default=1.0, help="shorten every phase (< 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    parser.add_argument(
        "--broker",
        metavar="HOST:PORT",
        help="a running broker for the scenarios that never stop theirs (default: their own)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: rewrite the document from the results it already holds",
    )
    parser.add_argument(
        "--base-port",
        type=base_port,
        metavar="PORT",
        help=f"the cluster scenario's {PORTS} broker and controller ports start here, so that"
        " runs sharing a machine can be given disjoint ranges (default: free ones at random)",
    )
    return parser


def main() -> None:
    args = parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.render_only:
        args.out.write_text(render(embedded(args.out.read_text()), "make chaos"))
        print(f"rewrote {args.out}")
        return
    names = args.only or list(SCENARIOS)
    # The scenarios' brokers (kafka.sh, cluster.sh) stop once this process is gone, however it
    # ends: a killed run left them holding their ports and heaps.
    os.environ["KAFKA_STOP_WITH"] = str(os.getpid())
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    log.info("scratch dir (broker data, replica logs): %s", workdir)
    outcomes = asyncio.run(
        run(
            names,
            Context(
                workdir,
                rate=args.rate,
                scale=args.scale,
                existing_bootstrap=args.broker,
                base_port=args.base_port,
            ),
        )
    )
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = commit(written=args.out)
    old = embedded(args.out.read_text()) if args.out.exists() else []
    rows = merge(old, [row(o, head, date) for o in outcomes], list(SCENARIOS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, "make chaos"))
    print(f"wrote {args.out}")
    for o in outcomes:
        print(f"  {o.scenario:14} {o.verdict:5} {'; '.join(o.failures)}")
    passed = all(o.verdict == "pass" for o in outcomes)
    if passed and not args.keep:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    else:
        print(f"replica logs and broker data kept in {workdir}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
