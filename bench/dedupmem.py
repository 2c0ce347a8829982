"""Memory of the dedup stage's SeenWindow with 0, 100k and 1M realistic ids remembered.

Run in a fresh process so nothing else moves RSS: `python -m bench.dedupmem` prints JSON;
`--traced` measures with tracemalloc instead (its own bookkeeping would inflate RSS, so never both).
Each id is observed once, at increasing append times within the TTL, as a restore or a live
partition adds it: the window holds its 128-bit digest and one queue slot per id.
`--steady N` instead holds N ids a TTL for three TTLs, so ids expire as fast as they come (a
partition at a steady rate, the case a pod's limit must hold), and reports RSS and the window's
own estimate per id at the end: both depend on N through the dict's power-of-two table.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tracemalloc

import orjson

from bridge.dedup import SeenWindow, digest

SIZES = (100_000, 1_000_000)
TTL = 900.0
RATE = 5_000.0  # ids per second of append time: 1M ids span 200 s, all within the TTL


def realistic_ids(rng: random.Random, start: int, count: int) -> list[str]:
    """`CA_<16 hex>:<seq>`: calls of 20 events, as the platform's log entries give them."""
    out: list[str] = []
    call = ""
    for i in range(start, start + count):
        if i % 20 == 0:
            call = f"CA_{rng.getrandbits(64):016x}"
        out.append(f"{call}:{i % 20 + 1}")
    return out


def steady(size: int) -> dict[str, float]:
    """One window holding `size` ids over three TTLs: its steady state's bytes per id."""
    rng = random.Random(5)
    window = SeenWindow(ttl=TTL, max_entries=10 * size)
    rate = size / TTL
    gc.collect()
    base = _self_rss()
    added = 0
    while added < 3 * size:
        for k, event_id in enumerate(realistic_ids(rng, added, 1_000)):
            window.observe(digest(event_id), 1_790_000_000.0 + (added + k) / rate)
        added += 1_000
    gc.collect()
    ids = len(window)
    return {
        "entries": ids,
        "rss_per_entry": (_self_rss() - base) / ids,
        "estimate_per_entry": window.size_bytes() / ids,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.dedupmem", description=__doc__)
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--traced", action="store_true", help="measure with tracemalloc instead of RSS"
    )
    how.add_argument(
        "--steady", type=int, metavar="N", help="hold N ids a TTL for three TTLs instead"
    )
    args = parser.parse_args(argv)
    if args.steady is not None:
        sys.stdout.write(orjson.dumps(steady(args.steady)).decode() + "\n")
        return
    # tracemalloc counts Python's own allocations only (no allocator slack, no fragmentation):
    # a floor under the RSS figure, which is what a pod's memory limit sees.
    traced = args.traced
    rng = random.Random(5)
    window = SeenWindow(ttl=TTL, max_entries=5_000_000)
    gc.collect()
    if traced:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0] if traced else _self_rss()
    points = [{"entries": 0, "bytes": base, "bytes_per_entry": 0.0}]
    filled = 0
    for size in SIZES:
        # Ids are generated in chunks and dropped after adding: the window keeps what it keeps.
        while filled < size:
            chunk = min(1_000, size - filled)
            for k, event_id in enumerate(realistic_ids(rng, filled, chunk)):
                window.observe(digest(event_id), 1_790_000_000.0 + (filled + k) / RATE)
            filled += chunk
        gc.collect()
        now = tracemalloc.get_traced_memory()[0] if traced else _self_rss()
        points.append(
            {"entries": len(window), "bytes": now, "bytes_per_entry": (now - base) / size}
        )
    kind = "traced" if traced else "rss"
    sys.stdout.write(
        orjson.dumps({"window": "SeenWindow", "kind": kind, "points": points}).decode()
    )
    sys.stdout.write("\n")


def _self_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
