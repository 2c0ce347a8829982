"""Scenario 6: resident memory of the dedup window with 0, 100k and 1M realistic ids.

Run in a fresh process so nothing else moves RSS: `python -m bench.dedupmem` prints JSON.
"""

from __future__ import annotations

import gc
import random
import sys

import orjson

from bridge.dedup import DedupWindow

SIZES = (100_000, 1_000_000)


def realistic_ids(rng: random.Random, start: int, count: int) -> list[str]:
    """`CA_<16 hex>:<seq>`: calls of 20 events, as the platform's log entries give them."""
    out: list[str] = []
    call = ""
    for i in range(start, start + count):
        if i % 20 == 0:
            call = f"CA_{rng.getrandbits(64):016x}"
        out.append(f"{call}:{i % 20 + 1}")
    return out


def main() -> None:
    rng = random.Random(5)
    window = DedupWindow(ttl=900.0, max_entries=max(SIZES))
    gc.collect()
    base = _self_rss()
    points = [{"entries": 0, "rss_bytes": base, "bytes_per_entry": 0.0}]
    filled = 0
    for size in SIZES:
        # Ids are generated in chunks and dropped after adding: the window keeps what it keeps.
        while filled < size:
            chunk = min(1_000, size - filled)
            for event_id in realistic_ids(rng, filled, chunk):
                window.add(event_id)
            filled += chunk
        gc.collect()
        now = _self_rss()
        points.append(
            {"entries": len(window), "rss_bytes": now, "bytes_per_entry": (now - base) / size}
        )
    sys.stdout.write(orjson.dumps({"points": points}).decode() + "\n")


def _self_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
