"""The report: a markdown table per scenario and baseline, ratios, the machine, PNG plots.

python -m bench.report bench/results/<name>.json     # rewrite the report from a run's data
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import orjson

P99_GOAL_MS = 25.0
# Baseline (d): the naive handler with the bridge's exactly-once contract. Issue 12's targets are
# against the naive handler; bridge ÷ naive-eos is given beside them (never instead): what of a
# miss is the contract, what the bridge. Runs before it have none: their reports are unchanged.
EOS = "naive-eos"


Row = dict[str, Any] | None


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _ms(values: list[float]) -> str:
    return " / ".join(_f(v) for v in values)


def _lag(row: dict[str, Any]) -> str:
    """The loop lag column, a bucket bound: '-' in reports from before it was measured."""
    ms = float(row.get("loop_lag_max_ms", math.nan))
    if math.isnan(ms):
        return "-"
    return "> top bucket" if math.isinf(ms) else f"≤ {ms:,g}"


def sustained(row: dict[str, Any]) -> bool:
    """The one pass criterion, for every system: client p99 (scheduled send → answer) under the
    goal, ≥ 95% of offered, no error, nothing lost or doubled. The bridge's own histogram is
    reported beside it, never instead of it."""
    p99 = row["client_ms"][2]
    clean = row["lost"] == 0 and row["doubled"] == 0 and row["errors"] == 0
    return bool(clean and p99 < P99_GOAL_MS and row["throughput"] >= 0.95 * row["offered"])


def unfit(row: dict[str, Any] | None) -> str | None:
    """Why a baseline's fixed-rate run cannot be compared against (it failed the pass criterion:
    a stall there would make any ratio to it look met), or None."""
    if row is None or sustained(row):
        return None
    return f"failed the pass criterion (client p99 {_f(row['client_ms'][2])} ms)"


def _get(row: dict[str, Any] | None, key: str) -> float | None:
    return float(row[key]) if row is not None else None


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if sustained(r)]
    return max(ok, key=lambda r: r["offered"]) if ok else None


def _row(r: dict[str, Any], label: str | None = None) -> str:
    offered = "flat out" if r["offered"] <= 0 else f"{r['offered']:,.0f}"
    verdict = "ok" if r["lost"] == 0 and r["doubled"] == 0 and r["errors"] == 0 else "**FAIL**"
    return (
        f"| {label or r['scenario']} | {r['target']} | {offered} | {r['events']:,} "
        f"| {_f(r['throughput'], 0)} | {_ms(r['e2e_ms'])} | {_ms(r['client_ms'])} "
        f"| {_ms(r['hist_ms'])} | {_lag(r)} | {_f(r['cpu_per_10k'], 2)} "
        f"| {_f(r['broker_cpu_per_10k'], 2)} | {r['peak_rss'] / 2**20:,.0f} "
        f"| {r['lost']}/{r['doubled']}/{r['errors']} {verdict} |"
    )


HEADER = (
    "| scenario | target | offered ev/s | events | events/s | e2e p50/p95/p99 ms "
    "| client p50/p95/p99 ms | bridge receipt→ack p50/p95/p99 ms | loop lag max ms "
    "| CPU s/10k ev | broker CPU s/10k ev | peak RSS MiB | lost/doubled/errors |\n"
    "|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---|"
)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _broker_line(m: dict[str, Any], data: dict[str, Any]) -> str:
    """How the broker ran: reports before 2026-12-02 did not record it (the test broker's JVM)."""
    jvm = m.get("broker_jvm") or "-Xmx512m -Xms256m -XX:+UseSerialGC (not recorded: kafka.sh's)"
    if data.get("broker_reused"):
        start = "already running when the run began (its topics and JVM are not this run's)"
    elif "broker_jvm" in m:
        start = "started empty by this run"
    else:
        start = "started by this run on the data of earlier runs"
    return f"- broker JVM: `{jvm}`; {start}"


def write(data: dict[str, Any], out_dir: Path, name: str) -> Path:
    """Write `<name>.md` and its PNGs into out_dir; returns the markdown's path."""
    md = out_dir / f"{name}.md"
    md.write_text(markdown(data, name, _plots(data, out_dir, name)))
    return md


def markdown(data: dict[str, Any], name: str, plots: list[tuple[str, Path]]) -> str:
    """The report's text, linking `plots` (title, PNG path); pure, so tests need no matplotlib."""
    lines: list[str] = [f"# Benchmark report {name}", ""]
    m = data.get("machine", {})
    lines += [
        "## Machine and load",
        "",
        f"- CPU: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; memory {m.get('memory', '?')}; "
        f"{m.get('os', '')}, kernel {m.get('kernel', '')}",
        f"- Python {m.get('python', '')}, aiohttp {m.get('aiohttp', '')}, aiokafka "
        f"{m.get('aiokafka', '')}; Kafka {m.get('kafka', '')} (single node, KRaft, same box); "
        f"kcat: {m.get('kcat', '')}",
        _broker_line(m, data),
        f"- `uptime` at start: `{data.get('uptime_start', '')}`",
        f"- `uptime` at end: `{data.get('uptime_end', '')}`",
        f"- wall time {data.get('wall_s', 0):.0f} s{' (quick mode)' if data.get('quick') else ''}",
        *(
            [f"- **the run stopped early**, at a scenario that failed: `{data['aborted']}`"]
            if data.get("aborted")
            else []
        ),
        "",
        "The machine is shared and has 2 cores: the broker, the target, the load generator and "
        "the kcat consumer all compete for them, so absolute numbers are this box's, under this "
        "load; the ratios (same run, same broker, same topic layout: 3 partitions, RF 1) are the "
        "result. Each row's load average (1/5/15 min, before → after) is in the data file.",
        "",
    ]
    if "tree" in data:
        bs = data.get("bridge_settings", {})
        lines += [
            "The bridge measured is the two-stage one (issue 8): answered once its records are in "
            f"its own ingest topic ({_count(bs.get('ingest_partitions', 12), 'partition')}, "
            "LogAppendTime), "
            "deduplicated by its dedup stage into the output topic in transactions "
            f"({bs.get('commit_interval_ms', 100)} ms commit interval); every reader is "
            "read_committed.",
            "",
        ]
        if data["tree"]:
            lines += [
                "Uncommitted changes under bridge/ when this ran (other sessions work in the same "
                "tree): " + ", ".join(f"`{t}`" for t in data["tree"]),
                "",
            ]
    lines += _method(data)
    rows = data.get("rows", [])
    steps = data.get("steps", {})
    lines += ["## Results", "", HEADER]
    for series in steps.values():
        best = _best(series)
        if best is not None:
            lines.append(_row(best, f"{best['scenario']} (max sustained)"))
        else:
            lines.append(_row(series[0], f"{series[0]['scenario']} (none sustained; lowest)"))
    for r in rows:
        lines.append(_row(r))
    lines += [
        "",
        "Columns: *events/s* is distinct events read back from Kafka divided by the time from "
        "the first scheduled send to the last read (for the no-op publisher: the bridge's own "
        "published counter). *e2e* is scheduled send → read by a kcat consumer; *client* is "
        "scheduled send → HTTP answer (open loop: waiting for a free connection counts); *bridge* "
        "is the bridge's `publish_duration_seconds` histogram (receipt → Kafka ack, interpolated "
        "within its buckets). *loop lag max* is the highest bucket the bridge's event loop lag "
        "histogram reached during the row (a timer due every 0.25 s: how long the loop was held "
        "or starved of CPU at worst). *CPU s/10k ev* is the target process's user+system CPU "
        "over the run divided by events (for kcat: the kcat producer). A row is **FAIL** when "
        "any event was lost or doubled, or any request failed. *max sustained*: the highest "
        "step with no error, nothing lost or doubled, throughput ≥ 95% of offered and client "
        f"p99 < {P99_GOAL_MS:.0f} ms, the same criterion for every system (the bridge's own "
        "histogram is shown beside it, never instead of it).",
        "",
    ]
    if any(r["target"] == EOS for r in rows) or f"stepup:{EOS}" in steps:
        lines += [
            f"*{EOS}* (baseline d, `bench/baselines/naive_eos.py`) is the naive handler with the "
            "bridge's delivery contract and none of its logic: answered once the body is in an "
            "ingest topic (keyed by call, the bridge's partitions), then a plain aiokafka "
            "consume-transform-produce loop copies it to the output topic, one transaction per "
            "100 ms with the consumed offsets. Bridge ÷ it is the bridge's own share of a miss; "
            "the targets stay against the naive handler.",
            "",
        ]
    lines += _targets(data)
    lines += _ratios(data)
    lines += _two_stage(data)
    lines += _stage(data)
    lines += _restore(data)
    lines += _steps_table(steps)
    for title, path in plots:
        lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    lines += _memory(data)
    lines += _profile(data)
    lines += _notes(data)
    notes = Path(__file__).with_name("OPTIMISATIONS.md")
    if notes.exists() and "tree" not in data:
        # The optimisation history belongs to the reports of the one-stage path it measured.
        lines += ["", notes.read_text()]
    return "\n".join(lines) + "\n"


def _method(data: dict[str, Any]) -> list[str]:
    """How the steps were taken: their length, the warm-ups, the bisection."""
    plan = data.get("plan")
    if not plan:
        return []
    text = (
        f"Method: every step lasts {plan['step_seconds']:.0f} s of open-loop load; the broker is "
        f"warmed once ({plan['broker_warm_seconds']:.0f} s through a throw-away bridge) and every "
        f"system {plan['warm_seconds']:.0f} s at its first step's rate before that step. A "
        "step-up climbs coarse steps until one fails, then bisects between the last pass and "
        f"that failure (up to {plan['bisect']} steps, rounded to 50/s)."
    )
    if plan["step_seconds"] < 20:
        text += (
            f" **Quick mode: {plan['step_seconds']:.0f} s steps are too short for a steady state "
            "(a backlog that grows for a few seconds barely moves a p99); indicative only.**"
        )
    return [text, ""]


def _targets(data: dict[str, Any]) -> list[str]:
    """Issue 12's goals, checked against this run (goals for the benchmark, not test asserts)."""
    steps = data.get("steps", {})
    out = ["## Targets", "", "| goal | this run | met |", "|---|---|---|"]

    def goal(what: str, value: str, met: bool | None) -> None:
        out.append(f"| {what} | {value} | {'-' if met is None else ('yes' if met else '**no**')} |")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b and not math.isnan(a) and not math.isnan(b) else None

    def eos(a: float | None, b: float | None, what: str = "", row: Row = None) -> str:
        """'; ÷ naive-eos …' beside a ratio to the naive handler, when the run has baseline (d)."""
        r = ratio(a, b)
        if r is None:
            return ""
        why = unfit(row)
        return f"; ÷ {EOS}{what} {r:.2f}x" + (f" (not judged: its run {why})" if why else "")

    def judged(row: Row, met: bool) -> tuple[str, bool | None]:
        """The verdict against the naive handler's fixed-rate run, unless that run was unfit."""
        why = unfit(row)
        return (f" (not judged: the naive handler's run {why})", None) if why else ("", met)

    best = _best(steps.get("stepup:bridge", []))
    naive = _best(steps.get("stepup:naive", []))
    top, n_top = _get(best, "offered") or 0.0, _get(naive, "offered")
    e_top = _get(_best(steps.get(f"stepup:{EOS}", [])), "offered")
    r = ratio(top, n_top)
    if steps.get("stepup:bridge") or steps.get("stepup:naive"):
        goal(
            "webhooks, one event per request, one process: max sustained ≥ 1.0x the naive handler",
            f"bridge {top:,.0f} vs naive {n_top or 0:,.0f} events/s"
            + (f" = {r:.2f}x" if r is not None else "")
            + eos(top, e_top, f" ({e_top or 0:,.0f} events/s)"),
            None if r is None else r >= 1.0,
        )
    two = _best(steps.get("stepup-2proc:bridge", []))
    if steps.get("stepup-2proc:bridge"):
        p_top = _get(two, "offered") or 0.0
        goal(
            "two processes: their max sustained, ÷ one process",
            f"{p_top:,.0f} events/s" + (f" = {p_top / top:.2f}x" if top else ""),
            None,
        )
    pod = _best(steps.get("stepup-pod:bridge", []))
    if steps.get("stepup-pod:bridge"):
        p_top = _get(pod, "offered") or 0.0
        workers = data.get("pod_workers", "?")
        goal(
            f"one pod, {workers} workers (one per core), one port: max sustained, ÷ one process",
            f"{p_top:,.0f} events/s"
            + (f" = {p_top / top:.2f}x" if top else "")
            + (f"; ÷ naive {p_top / n_top:.2f}x" if n_top else "")
            + eos(p_top, e_top),
            None,
        )
    split = _best(steps.get("stepup-split:bridge", []))
    if steps.get("stepup-split:bridge"):
        s_top = _get(split, "offered") or 0.0
        goal(
            "one webhook process beside its dedup process (BRIDGE_DEDUP__OWN_PROCESS): max "
            "sustained, ÷ one process",
            f"{s_top:,.0f} events/s"
            + (f" = {s_top / top:.2f}x" if top else "")
            + (f"; ÷ naive {s_top / n_top:.2f}x" if n_top else "")
            + eos(s_top, e_top),
            None,
        )
    single, n_single, e_single = (
        _find(data, "webhook-single", "bridge"),
        _find(data, "webhook-single", "naive"),
        _find(data, "webhook-single", EOS),
    )
    r = ratio(_get(single, "cpu_per_10k"), _get(n_single, "cpu_per_10k"))
    if r is not None and single is not None:
        note, met = judged(n_single, r <= 1.3)
        goal(
            "CPU per event ≤ 1.3x the naive handler's (at 70% of the bridge's max)",
            f"{r:.2f}x at {single['offered']:,.0f}/s{note}"
            + eos(_get(single, "cpu_per_10k"), _get(e_single, "cpu_per_10k"), row=e_single),
            met,
        )
    ws_noop = _find(data, "ws-flat-out", "noop")
    for scenario, what in (
        ("ws-flat-out", "WebSocket feed flat out ≥ 0.8x the no-op publisher"),
        (
            "ws-flat-out-split",
            "the same, the dedup stage in a process of its own (BRIDGE_DEDUP__OWN_PROCESS)",
        ),
    ):
        ws = _find(data, scenario, "bridge")
        r = ratio(_get(ws, "throughput"), _get(ws_noop, "throughput"))
        if r is None:
            continue
        # A run that lost events measured how fast frames were dropped, not published.
        lossy = any(row["lost"] or row["doubled"] or row["errors"] for row in (ws, ws_noop) if row)
        goal(
            what,
            f"{r:.2f}x" + (" (events lost: not a throughput)" if lossy else ""),
            False if lossy else r >= 0.8,
        )
    stage = data.get("stage")
    if stage and top:
        r = stage["events_per_s"] / top
        goal(
            "dedup stage ≥ 3x the one-process webhook rate",
            f"{stage['events_per_s']:,.0f} events/s = {r:.1f}x",
            r >= 3.0,
        )
    elif stage:
        # A run of the stage alone has no webhook rate to divide by: judge it against a full run's.
        goal(
            "dedup stage ≥ 3x the one-process webhook rate",
            f"{stage['events_per_s']:,.0f} events/s (no webhook step-up in this run)",
            None,
        )
    e2e = single["e2e_ms"][2] if single else None
    r = ratio(e2e, n_single["e2e_ms"][2] if n_single else None)
    if r is not None:
        note, met = judged(n_single, r <= 1.5)
        goal(
            "end-to-end p99 at 70% of the sustained rate ≤ 1.5x the naive handler's",
            f"{r:.2f}x{note}" + eos(e2e, e_single["e2e_ms"][2] if e_single else None, row=e_single),
            met,
        )
    out.append("")
    return out


def _find(data: dict[str, Any], scenario: str, target: str) -> dict[str, Any] | None:
    for r in data.get("rows", []):
        if r["scenario"] == scenario and r["target"] == target:
            return dict(r)
    return None


def _ratios(data: dict[str, Any]) -> list[str]:
    steps = data.get("steps", {})
    out = [
        "## Ratios",
        "",
        "| what | bridge | baseline | bridge ÷ baseline |",
        "|---|---:|---:|---:|",
    ]

    def line(what: str, a: float | None, b: float | None, digits: int = 0) -> None:
        if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
            return
        out.append(f"| {what} | {_f(a, digits)} | {_f(b, digits)} | {a / b:.2f} |")

    bridge = _best(steps.get("stepup:bridge", []))
    naive = _best(steps.get("stepup:naive", []))
    noop = _best(steps.get("stepup:noop", []))
    kcat = _find(data, "flat-out", "kcat")
    ws = _find(data, "ws-flat-out", "bridge")
    ws_noop = _find(data, "ws-flat-out", "noop")
    b_max = bridge["offered"] if bridge else None
    line("webhooks, max sustained events/s vs naive handler (c)", b_max, _get(naive, "offered"))
    line(
        "webhooks, max sustained events/s vs naive handler, exactly-once (d)",
        b_max,
        _get(_best(steps.get(f"stepup:{EOS}", [])), "offered"),
    )
    line("webhooks, max sustained events/s vs no-op publisher (b)", b_max, _get(noop, "offered"))
    line("webhooks, max sustained events/s vs kcat flat out (a)", b_max, _get(kcat, "throughput"))
    line(
        "feed flat out, events/s vs kcat flat out (a)",
        _get(ws, "throughput"),
        _get(kcat, "throughput"),
    )
    line(
        "feed flat out, events/s vs no-op publisher (b)",
        _get(ws, "throughput"),
        _get(ws_noop, "throughput"),
    )
    line(
        "feed flat out, the dedup stage apart, events/s vs no-op publisher (b)",
        _get(_find(data, "ws-flat-out-split", "bridge"), "throughput"),
        _get(ws_noop, "throughput"),
    )
    single = {t: _find(data, "webhook-single", t) for t in ("bridge", "naive", EOS, "noop", "kcat")}
    b = single["bridge"]
    if b:
        for t in ("naive", EOS, "kcat", "noop"):
            o = single[t]
            if o:
                # kcat has no client latency to judge: it is never unfit.
                why = unfit(o) if t != "kcat" else None
                t = f"{t} (its run {why})" if why else t
                line(
                    f"one event per request at {b['offered']:,.0f}/s: CPU s/10k vs {t}",
                    b["cpu_per_10k"],
                    o["cpu_per_10k"],
                    2,
                )
                line(
                    f"one event per request at {b['offered']:,.0f}/s: e2e p99 ms vs {t}",
                    b["e2e_ms"][2],
                    o["e2e_ms"][2],
                    1,
                )
        for t in ("naive", EOS):
            o = single[t]
            if o:
                why = unfit(o)
                t = f"{t} (its run {why})" if why else t
                line(
                    f"one event per request at {b['offered']:,.0f}/s: client p99 ms vs {t}",
                    b["client_ms"][2],
                    o["client_ms"][2],
                    1,
                )
    out.append("")
    return out


def _steps_table(steps: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = [
        "## Step-up (scenario 5) and batches (scenario 2)",
        "",
        "| series | offered ev/s | events/s | client p50/p95/p99 ms | bridge p50/p95/p99 ms "
        "| loop lag max ms | e2e p99 ms | CPU s/10k | errors | sustained | step |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---|---|",
    ]
    for key, series in steps.items():
        for r in series:
            out.append(
                f"| {key} | {r['offered']:,.0f} | {_f(r['throughput'], 0)} | {_ms(r['client_ms'])} "
                f"| {_ms(r['hist_ms'])} | {_lag(r)} | {_f(r['e2e_ms'][2])} "
                f"| {_f(r['cpu_per_10k'], 2)} "
                f"| {r['errors'] + r['lost'] + r['doubled']} | {'yes' if sustained(r) else 'no'} "
                f"| {r.get('note') or '-'} |"
            )
    out.append("")
    return out


def _plots(data: dict[str, Any], out_dir: Path, name: str) -> list[tuple[str, Path]]:
    steps = data.get("steps", {})
    if not steps:
        return []
    # Imported here: matplotlib is in the bench extra only, and the tests import this module.
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    made: list[tuple[str, Path]] = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = 0.0
    for key, series in steps.items():
        xs = [r["offered"] for r in series]
        ax.plot(xs, [r["throughput"] for r in series], marker="o", label=key)
        top = max(top, *xs)
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="offered = achieved")
    ax.set_xlabel("offered load (events/s)")
    ax.set_ylabel("achieved (events/s)")
    ax.set_title("Throughput vs offered load")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = out_dir / f"{name}-throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(("Throughput vs offered load", path))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, series in steps.items():
        xs = [r["offered"] for r in series]
        for q, style in ((0, ":"), (1, "--"), (2, "-")):
            label = f"{key} client p{(50, 95, 99)[q]}"
            ax.plot(
                xs, [r["client_ms"][q] for r in series], linestyle=style, marker=".", label=label
            )
        if key.endswith(":bridge"):
            ax.plot(
                xs,
                [r["hist_ms"][2] for r in series],
                linestyle="-.",
                marker="x",
                label=f"{key} receipt→ack p99",
            )
    ax.axhline(P99_GOAL_MS, color="red", linewidth=0.8, label="25 ms goal")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (events/s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title("Latency percentiles vs offered load")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    path = out_dir / f"{name}-latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(("Latency percentiles vs offered load", path))
    return made


def _memory(data: dict[str, Any]) -> list[str]:
    dedup = data.get("dedup")
    if not dedup:
        return []
    if dedup.get("window") == "SeenWindow":
        traced = {p["entries"]: p for p in dedup.get("traced", [])}
        out = [
            "## Dedup stage memory: SeenWindow (scenario 6)",
            "",
            "A fresh process observes realistic ids (`CA_<16 hex>:<seq>`, 20 per call) into a "
            "`SeenWindow` (ttl 900 s, all within the TTL): the window keeps each id's 128-bit "
            "digest → last-seen time, and a queue slot (digest halves, time) per sighting. RSS is "
            "read from /proc; tracemalloc (a second fresh process) counts Python's allocations "
            "only, without allocator slack.",
            "",
            "| ids in the window | RSS MiB | bytes per id (RSS) | bytes per id (tracemalloc) |",
            "|---:|---:|---:|---:|",
        ]
        for p in dedup["points"]:
            t = traced.get(p["entries"])
            out.append(
                f"| {p['entries']:,} | {p['bytes'] / 2**20:,.1f} | {_f(p['bytes_per_entry'], 0)} "
                f"| {_f(t['bytes_per_entry'], 0) if t else '-'} |"
            )
        out.append("")
        return out
    out = [
        "## Dedup window memory (scenario 6)",
        "",
        "A fresh process fills a `DedupWindow` (ttl 900 s) with realistic ids "
        "(`CA_<16 hex>:<seq>`, 20 per call); resident size is read from /proc.",
        "",
        "| ids in the window | RSS MiB | bytes per id |",
        "|---:|---:|---:|",
    ]
    for p in dedup["points"]:
        out.append(
            f"| {p['entries']:,} | {p['rss_bytes'] / 2**20:,.1f} | {_f(p['bytes_per_entry'], 0)} |"
        )
    out.append("")
    return out


def _two_stage(data: dict[str, Any]) -> list[str]:
    """One and two bridge processes against the baselines of the same run, same criterion."""
    steps = data.get("steps", {})
    one = steps.get("stepup:bridge")
    if not any(steps.get(f"{s}:bridge") for s in ("stepup-2proc", "stepup-pod", "stepup-split")):
        return []
    out = [
        "## Two-stage path: webhooks, one process, two processes, one pod of workers, the dedup "
        "stage apart",
        "",
        "Step-up, one event per request. *two processes*: two bridge processes sharing the "
        "ingest topic and dedup group (6 ingest partitions each once the group settled), the "
        "load generator sending request j to process j mod 2 (round-robin). *one pod of "
        "workers*: one `pinecall-bridge run` with `BRIDGE_HTTP__WORKERS` = the cores, its worker "
        "processes sharing one port (SO_REUSEPORT: the kernel spreads the connections). *the "
        "dedup stage apart*: one `pinecall-bridge run` with `BRIDGE_DEDUP__OWN_PROCESS=true`, "
        "one worker taking every webhook (the ingest stage only) beside one running the dedup "
        "stage. CPU and "
        "peak RSS are the processes' sum; *bridge p99* is their merged receipt → ingest-ack "
        "histograms. "
        "*e2e* is scheduled send → first read by a read_committed kcat consumer of the output "
        "topic: it includes the dedup stage and its transaction commit interval (100 ms). Pass "
        f"criterion, as for every series: no error, nothing lost or doubled, ≥ 95% of offered, "
        f"client p99 < {P99_GOAL_MS:.0f} ms (the bridge's own histogram only shown beside it).",
        "",
        "| system | max sustained ev/s | client p50/p95/p99 ms | bridge p99 ms "
        "| e2e p50/p95/p99 ms | CPU s/10k ev | dedup txn/s | peak RSS MiB | first failing step |",
        "|---|---:|---|---:|---|---:|---:|---:|---|",
    ]
    labels = {
        "stepup:bridge": "bridge, one process",
        "stepup-2proc:bridge": "bridge, two processes",
        "stepup-pod:bridge": f"bridge, one pod of {data.get('pod_workers', '?')} workers",
        "stepup-split:bridge": "bridge, one webhook process + its dedup process",
        "stepup:naive": "naive handler (c)",
        f"stepup:{EOS}": "naive handler, exactly-once (d)",
        "stepup:noop": "no-op publisher (b)",
    }
    best: dict[str, dict[str, Any] | None] = {}
    for key, label in labels.items():
        series = steps.get(key)
        if not series:
            continue
        b = best[key] = _best(series)
        # The lowest failing step: after the bisection, the closest to the limit.
        failing = sorted((r for r in series if not sustained(r)), key=lambda r: r["offered"])
        fail = (
            f"{failing[0]['offered']:,.0f}/s: client p99 {_f(failing[0]['client_ms'][2])}, "
            f"bridge p99 {_f(failing[0]['hist_ms'][2])}, {_f(failing[0]['throughput'], 0)} ev/s, "
            f"lost/doubled/errors {failing[0]['lost']}/{failing[0]['doubled']}/"
            f"{failing[0]['errors']}"
            if failing
            else "-"
        )
        if b is None:
            out.append(f"| {label} | none sustained | | | | | | | {fail} |")
            continue
        txn = b.get("transactions")
        per_s = txn * b["offered"] / b["events"] if txn is not None and b["events"] else None
        out.append(
            f"| {label} | {b['offered']:,.0f} | {_ms(b['client_ms'])} | {_f(b['hist_ms'][2])} "
            f"| {_ms(b['e2e_ms'])} | {_f(b['cpu_per_10k'], 2)} | {_f(per_s, 0)} "
            f"| {b['peak_rss'] / 2**20:,.0f} | {fail} |"
        )
    out += ["", "| ratio | value |", "|---|---:|"]

    def ratio(what: str, a: dict[str, Any] | None, b: dict[str, Any] | None) -> None:
        if a is not None and b is not None and b["offered"]:
            out.append(f"| {what} | {a['offered'] / b['offered']:.2f} |")

    ratio("two processes ÷ one process, max sustained", best.get("stepup-2proc:bridge"),
          best.get("stepup:bridge"))  # fmt: skip
    ratio("one pod of workers ÷ one process, max sustained", best.get("stepup-pod:bridge"),
          best.get("stepup:bridge"))  # fmt: skip
    ratio("one pod of workers ÷ naive handler, max sustained", best.get("stepup-pod:bridge"),
          best.get("stepup:naive"))  # fmt: skip
    ratio(f"one pod of workers ÷ {EOS}, max sustained", best.get("stepup-pod:bridge"),
          best.get(f"stepup:{EOS}"))  # fmt: skip
    ratio("the dedup stage apart ÷ one process, max sustained", best.get("stepup-split:bridge"),
          best.get("stepup:bridge"))  # fmt: skip
    ratio("the dedup stage apart ÷ naive handler, max sustained",
          best.get("stepup-split:bridge"), best.get("stepup:naive"))  # fmt: skip
    ratio(f"the dedup stage apart ÷ {EOS}, max sustained",
          best.get("stepup-split:bridge"), best.get(f"stepup:{EOS}"))  # fmt: skip
    ratio("one process ÷ naive handler, max sustained", best.get("stepup:bridge"),
          best.get("stepup:naive"))  # fmt: skip
    ratio(f"one process ÷ {EOS}, max sustained", best.get("stepup:bridge"),
          best.get(f"stepup:{EOS}"))  # fmt: skip
    ratio("two processes ÷ naive handler, max sustained", best.get("stepup-2proc:bridge"),
          best.get("stepup:naive"))  # fmt: skip
    ratio(f"two processes ÷ {EOS}, max sustained", best.get("stepup-2proc:bridge"),
          best.get(f"stepup:{EOS}"))  # fmt: skip
    ratio("one process ÷ no-op publisher, max sustained", best.get("stepup:bridge"),
          best.get("stepup:noop"))  # fmt: skip
    if out[-1] == "|---|---:|":
        out[-2:] = ["(No ratio of max sustained rates: a series sustained no step.)"]
    out += ["", *_same_step(steps, labels)]
    out.append("")
    if one is None:
        out.insert(2, "(No one-process series in this run.)\n")
    return out


def _same_step(steps: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> list[str]:
    """Every series at the lowest offered step, against the naive handler at that step (and
    against baseline (d), in columns of their own, when the run has it)."""
    series = {k: v for k, v in steps.items() if k in labels and v}
    if not series:
        return []
    low = min(r["offered"] for v in series.values() for r in v)
    at = {k: next((r for r in v if r["offered"] == low), None) for k, v in series.items()}
    naive, eos = at.get("stepup:naive"), at.get(f"stepup:{EOS}")
    out = [
        f"At the lowest step, {low:,.0f} events/s, same run (ratio: ÷ the naive handler's"
        + (f"; ÷ {EOS}: ÷ the naive handler's with the exactly-once contract" if eos else "")
        + "):",
        "",
        "| system | client p99 ms | bridge p99 ms | e2e p99 ms | CPU s/10k ev "
        "| client p99 ratio | e2e p99 ratio | CPU ratio |"
        + (f" e2e p99 ÷ {EOS} | CPU ÷ {EOS} |" if eos else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if eos else ""),
    ]

    def ratio(r: dict[str, Any], key: str, i: int | None, base: dict[str, Any] | None) -> str:
        if base is None:
            return "-"
        a = r[key][i] if i is not None else r[key]
        b = base[key][i] if i is not None else base[key]
        return "-" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}"

    for key, r in at.items():
        if r is None:
            continue
        out.append(
            f"| {labels[key]} | {_f(r['client_ms'][2])} | {_f(r['hist_ms'][2])} "
            f"| {_f(r['e2e_ms'][2])} | {_f(r['cpu_per_10k'], 2)} "
            f"| {ratio(r, 'client_ms', 2, naive)} | {ratio(r, 'e2e_ms', 2, naive)} "
            f"| {ratio(r, 'cpu_per_10k', None, naive)} |"
            + (
                f" {ratio(r, 'e2e_ms', 2, eos)} | {ratio(r, 'cpu_per_10k', None, eos)} |"
                if eos
                else ""
            )
        )
    return out


def _profile_rows(prof: dict[str, Any]) -> list[str]:
    out = []
    if prof.get("attribution"):
        # bench.profile.part_of: the innermost frame that names a part of the work.
        out += ["| part of the work | share of samples |", "|---|---:|"]
        out += [f"| {part} | {share:.1%} |" for part, share in prof["attribution"]]
        out.append("")
    out += [
        f"{prof['samples']:,} samples. Own time (the function itself) and inclusive time (on the "
        "stack):",
        "",
        "| own | function | | inclusive | function |",
        "|---:|---|---|---:|---|",
    ]
    for (f1, s1), (f2, s2) in zip(prof["own"], prof["inclusive"], strict=False):
        out.append(f"| {s1:.1%} | `{f1}` | | {s2:.1%} | `{f2}` |")
    out.append("")
    return out


def _stage(data: dict[str, Any]) -> list[str]:
    st = data.get("stage")
    if not st:
        return []
    out = [
        "## Dedup stage throughput",
        "",
        f"An ingest topic ({st['partitions']} partitions, LogAppendTime, keyed by call id) is "
        f"pre-filled with {st['records']:,} records: {st['distinct']:,} distinct ids and a late "
        "second copy of every 10th (500 records later). One `DedupStage` (fresh group, default "
        "settings, uvloop) then runs alone in its process; the clock stops when a read_committed "
        "kcat consumer has seen every distinct id in the output topic. *process* and *commit* "
        "are the shares of wall time inside `PartitionTask.process` (decide and send) and "
        "`StageProducer.commit` (offsets + commit), which the stage runs under one lock. *loop "
        "held* is how late a timer due every 5 ms fired (p99 / max): the longest a webhook in "
        "the same process would have waited for the stage.",
        "",
        "| distinct events/s | ingest records/s | steady events/s (after first output) "
        "| first output after s | total s | stage CPU (µs/record) | broker CPU (µs/record) "
        "| wall in process / commit | commit p50/p99 ms | loop held p99/max ms | transactions "
        "| lost/doubled |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---|",
        f"| {st['events_per_s']:,.0f} | {st['records_per_s']:,.0f} "
        f"| {st['steady_events_per_s']:,.0f} | {st['first_output_s']:.2f} | {st['total_s']:.1f} "
        f"| {st['cpu_share']:.0%} ({st['cpu_s'] / st['records'] * 1e6:.0f}) "
        f"| {_pct(st.get('broker_cpu_share'))} "
        f"({_f(st.get('broker_cpu_share', math.nan) * st['total_s'] / st['records'] * 1e6, 0)}) "
        f"| {st['process_share']:.0%} / {st['commit_share']:.0%} "
        f"| {_f(st['commit_ms'][0], 0)} / {_f(st['commit_ms'][1], 0)} "
        f"| {' / '.join(_f(x, 0) for x in st.get('loop_lag_ms', [math.nan] * 2))} "
        f"| {st['transactions']:,.0f} | {st['lost']}/{st['doubled']} "
        f"{'ok' if st['lost'] == 0 and st['doubled'] == 0 else '**FAIL**'} |",
        "",
    ]
    if st.get("profile"):
        out += ["### Profile of the dedup stage (py-spy, in-process)", ""]
        out += _profile_rows(st["profile"])
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.0%}"


def _restore(data: dict[str, Any]) -> list[str]:
    rs = data.get("restore")
    if not rs:
        return []
    out = [
        "## Restore: rebuilding a partition's seen-window",
        "",
        "N ingest records (one distinct id each, the bridge's own encoding of realistic events, "
        "~430-byte CloudEvent values plus ~280 bytes of headers) in one partition of a "
        "LogAppendTime topic; `bridge.dedup.restore.restore` replays them into a fresh "
        "`SeenWindow` (ttl 900 s, all within it). The per-record split: the same range fetched "
        "by the same consumer settings without decoding (*fetch*), and on 100k records held in "
        "memory, `ingest.record.decode`, `digest` (BLAKE2b-128) and `SeenWindow.observe`.",
        "",
        "| ids | restore s | records/s | process CPU (µs/record) | fetch µs | decode µs "
        "| digest µs | observe µs | restore µs/record | pre-fill s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rs["sizes"]:
        out.append(
            f"| {r['ids']:,} | {r['restore_s']:.2f} | {r['records_per_s']:,.0f} "
            f"| {r['cpu_share']:.0%} ({r['cpu_s'] / max(r['restored'], 1) * 1e6:.0f}) "
            f"| {r['fetch_us']:.1f} | {r['decode_us']:.1f} "
            f"| {r['digest_us']:.1f} | {r['observe_us']:.1f} | {r['restore_us']:.1f} "
            f"| {r['fill_s']:.0f} |"
        )
    out.append("")
    for r in rs["sizes"]:
        if r.get("profile"):
            out += [f"### Profile of the {r['ids']:,}-id restore (py-spy, in-process)", ""]
            out += _profile_rows(r["profile"])
    return out


def _profile(data: dict[str, Any]) -> list[str]:
    prof = data.get("profile")
    if not prof:
        return []
    return [
        "## Profile (py-spy, the bridge at 70% of its max, one event per request)",
        "",
        *_profile_rows(prof),
    ]


def _notes(data: dict[str, Any]) -> list[str]:
    notes = data.get("notes")
    return ["## Notes", "", *notes, ""] if notes else []


def main() -> None:
    source = Path(sys.argv[1])
    data = orjson.loads(source.read_bytes())
    # JSON has no NaN: orjson wrote the missing measurements as null.
    for row in [*data.get("rows", []), *(r for s in data.get("steps", {}).values() for r in s)]:
        for key, value in row.items():
            if value is None:
                row[key] = math.nan
            elif isinstance(value, list):
                row[key] = [math.nan if v is None else v for v in value]
    print(write(data, source.parent, source.stem))


if __name__ == "__main__":
    main()
