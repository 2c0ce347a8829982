"""Whether a webhook attempt succeeded, should be retried or is final; the backoff. Pure."""

from __future__ import annotations

from typing import Literal

Verdict = Literal["ok", "retry", "final"]


def judge(status: int | None) -> Verdict:
    """`status` None means a transport error or a timeout: retried, like a 5xx; a 4xx is final."""
    if status is None or status >= 500:
        return "retry"
    if 200 <= status < 300:
        return "ok"
    return "final"


def backoff(base: float, attempt: int, cap: float) -> float:
    """The wait after failed attempt number `attempt` (from 1): base, 2 base, 4 base..."""
    return float(min(cap, base * 2.0 ** (attempt - 1)))
