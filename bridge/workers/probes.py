"""The pod's /healthz and /readyz from its workers' own answers: all must be fine.

Only the workers serving the port count for /readyz: a dedup stage of its own (down for a
restart, say) does not stop webhooks being taken, as a single process's stage never does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

# A worker's answer: its HTTP status and the `status` of its JSON body; None: no answer in time.
Answer = tuple[int, str] | None
UNREACHABLE = "unreachable"


def pod_answer(
    answers: Mapping[str, Answer],
    ok: str,
    not_ok: str,
    counted: Collection[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """200 and `ok` when every worker answered 200; else 503, `not_ok` and the failing workers.

    `counted`: the workers that decide (all by default); the others' states are shown only.
    """
    workers = {worker: answer[1] if answer else UNREACHABLE for worker, answer in answers.items()}
    failing = [
        worker
        for worker, answer in answers.items()
        if (counted is None or worker in counted) and (answer is None or answer[0] != 200)
    ]
    if not failing:
        return 200, {"status": ok, "workers": workers}
    return 503, {"status": not_ok, "failing": failing, "workers": workers}
