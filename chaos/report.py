"""docs/reliability.md from the scenarios' outcomes; the rows ride along as JSON for `--only`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from chaos.harness import Outcome

MARK = "chaos-results"
_EMBEDDED = re.compile(r"<!-- " + MARK + r"\n(.*?)\n-->", re.DOTALL)

METHOD = """\
Each scenario starts its own single-node KRaft broker on a free port (tools/kafka/kafka.sh;
never the shared 9092 one; `cluster` starts three with tools/kafka/cluster.sh) and real
`pinecall-bridge run` processes (tests/integration/replicas.py), then drives load and injects
its fault while it flows. Webhook load is open-loop: event *i*
(bench/events.py's interleaved calls) is due at *t0 + i / rate*, so a stalled bridge builds a
backlog instead of slowing the sender; within a call the events go one at a time, each retried
after a transport failure or a 5xx (Retry-After honoured, capped at 2 s) until a 2xx, as Pinecall
delivers them. Every attempt's status is recorded. Where a scenario has phases (`cluster`), the
load runs by time until its last phase ends, and each judged phase must see requests in flight
during it (at least 5% of the offered rate times its length): a phase the load never reached
fails, never passes on nothing. A SIGKILLed broker stays in every ISR until the controllers fence
it (the cluster's `broker.session.timeout.ms`, 9 s, counted from the new controller's election
when the broker killed was the active controller: seconds later), and no acks=all write is
acknowledged anywhere until then; so `cluster` keeps its leader down for at least that plus 8 s
whatever `--scale` (longer when the fencing came later), and judges that phase on failover: every
event in flight acknowledged within 5 s of the fencing as the metadata showed it (the last read,
every 0.2 s, still listing the broker in an ISR) or of its own first attempt, if later, some before
the leader returns. With two brokers of three down the controllers have no quorum and no ISR can
shrink: every request both sent and answered in that time must be a 503 (one sent late in it may
be acknowledged once the two are back). Once the
dedup group has committed every ingest record, a read_committed consumer reads the output topics
to their end, and one checker (chaos/checker.py) compares: **lost** = acknowledged (2xx) but
absent, **doubled** = an id present more than once, order = each call's records in the order it
sent them, and no 5xx other than 503. For the feed, "acknowledged" means written to the bridge's
socket by the simulator; the
feed has no replay, so frames still in a socket when a fault cut it are counted apart and
tolerated only as that connection's tail. For the call logs (SSE), "acknowledged" means every
durable entry the simulator's logs hold: the bridge reads them, so each is owed, in seq order
within its call. Ingest copies beyond the requests that carried an event
would be a producer retry that doubled. A 503 must come within the publish timeout
(5 s here) plus 2 s, measured at the client less the CPU starvation during the request (the same
for the crash phase's acknowledgements): the time the harness's own event loop ran late, and the
time the bridge's main thread waited on a run queue (its schedstat, sampled every quarter second
and interpolated), per quarter second the larger of the two since both starve at once; where
/proc has no schedstat, the harness's lag alone, and the check says so. Its detail gives the raw
figures and the starvation subtracted.
Peak RSS is the largest VmHWM of any bridge process, sampled from /proc every half second.
Faults come from the harness: `kafka.sh down/up`, SIGKILL of broker nodes, a small asyncio TCP
proxy (latency, black hole, RST resets, round robin over replicas), signals, and the simulator's
`/_sim/` controls. The machine is a shared 2-core box, so timings are indicative."""


def row(outcome: Outcome, commit: str, date: str) -> dict[str, Any]:
    c = outcome.counts
    return {
        "scenario": outcome.scenario,
        "fault": outcome.fault,
        "sent": c.sent,
        "requests": c.requests,
        "acknowledged": c.acknowledged,
        "lost": c.lost,
        "doubled": c.doubled,
        "status_503": c.status_503,
        "other_5xx": c.other_5xx,
        "transport_errors": c.transport_errors,
        "order_violations": c.order_violations,
        "unexpected": c.unexpected,
        "peak_rss_mib": round(outcome.peak_rss_mib, 1),
        "verdict": outcome.verdict,
        "failures": outcome.failures,
        "checks": [[k.name, k.ok, k.detail] for k in outcome.checks],
        "notes": outcome.notes,
        "lost_sample": list(c.lost_ids[:5]),
        "doubled_sample": list(c.doubled_ids[:5]),
        "seconds": round(outcome.seconds),
        "commit": commit,
        "date": date,
    }


def embedded(markdown: str) -> list[dict[str, Any]]:
    """The rows a previous run wrote into the document, [] when there are none."""
    found = _EMBEDDED.search(markdown)
    if found is None:
        return []
    rows: list[dict[str, Any]] = json.loads(found.group(1))
    return rows


def merge(
    old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]], order: list[str]
) -> list[dict[str, Any]]:
    """New rows replace old ones of the same scenario; scenarios in `order`, unknown ones last."""
    by_name = {r["scenario"]: dict(r) for r in old}
    by_name.update({r["scenario"]: dict(r) for r in new})
    rank = {name: n for n, name in enumerate(order)}
    return sorted(by_name.values(), key=lambda r: rank.get(r["scenario"], len(rank)))


def render(rows: list[dict[str, Any]], command: str) -> str:
    commits = sorted({f"`{r['commit']}` ({r['date']})" for r in rows})
    lines = [
        "# Reliability: the fault matrix",
        "",
        f"*Generated by `{command}` (chaos/); do not edit by hand. Rows from: "
        + ", ".join(commits)
        + ". The machine was a shared 2-core box, busy with other work at the time.*",
        "",
        "| scenario | sent | acknowledged | lost | doubled | 503s | other 5xx | peak RSS"
        " | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['sent']} | {r['acknowledged']} | {r['lost']} |"
            f" {r['doubled']} | {r['status_503']} | {r['other_5xx']} |"
            f" {r['peak_rss_mib']:.0f} MiB | {r['verdict']} |"
        )
    lines += ["", "## Method", "", METHOD, "", "## Scenarios", ""]
    for r in rows:
        lines += [f"### {r['scenario']}", "", r["fault"] + ".", ""]
        lines.append(
            f"{r['requests']} requests, {r['transport_errors']} without an HTTP answer,"
            f" {r['order_violations']} order violations, {r['unexpected']} records never sent;"
            f" {r['seconds']} s; commit `{r['commit']}`, {r['date']}."
        )
        lines.append("")
        for name, ok, detail in r["checks"]:
            lines.append(f"- {'pass' if ok else '**FAIL**'}: {name}: {detail}")
        for note in r["notes"]:
            lines.append(f"- note: {note}")
        if r["lost_sample"]:
            lines.append(f"- lost, e.g.: {', '.join(r['lost_sample'])}")
        if r["doubled_sample"]:
            lines.append(f"- doubled, e.g.: {', '.join(r['doubled_sample'])}")
        lines.append("")
    lines += [f"<!-- {MARK}", json.dumps(rows, indent=1), "-->", ""]
    return "\n".join(lines)
