"""The pod's /healthz and /readyz from its workers' own answers.

Only the workers serving the port count for /readyz: a dedup stage of its own (down for a
restart, say) does not stop webhooks being taken, as a single process's stage never does. Nor
does a serving worker that is down (its process exited, its listener with it: the kernel hands
new connections only to the others) while another is ready; one that answers no longer, or
answers 503, still holds its listener and its share of connections, so it does. Nor does one
that has not started yet, which will take its share before it is ready. A restarted worker
binds the port only once ready: until then (`not_listening`) it counts as down, as does a
stopping one once it has closed its listener.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

# A worker's answer: its HTTP status and the `status` of its JSON body; None: no answer in time.
Answer = tuple[int, str] | None
UNREACHABLE = "unreachable"
# No process behind a worker's socket (refused, or never created): it exited, to be restarted.
DOWN = "down"
# No socket from a worker never seen answering: at the pod's start, one still starting.
STARTING = "starting"


def pod_answer(
    answers: Mapping[str, Answer],
    ok: str,
    not_ok: str,
    counted: Collection[str] | None = None,
    *,
    down: Collection[str] = (),
    starting: Collection[str] = (),
    excuse_down: bool = True,
) -> tuple[int, dict[str, Any]]:
    """200 and `ok` when every worker answered 200; else 503, `not_ok` and the failing workers.

    `counted`: the workers that decide (all by default); the others' states are shown only.
    `down`: workers holding no listener (no process, or one not bound yet), shown as such and,
    with `excuse_down` (readiness, not liveness), excused while a counted one is ok.
    `starting`: workers with no answer yet, shown as such (never excused).
    """
    workers = {
        worker: answer[1] if answer else _missing(worker, down, starting)
        for worker, answer in answers.items()
    }
    excused = down if excuse_down else ()
    deciding = [worker for worker in answers if counted is None or worker in counted]
    failing = [
        worker for worker in deciding if worker not in excused and not _fine(answers[worker])
    ]
    if not failing and any(worker not in excused for worker in deciding):
        return 200, {"status": ok, "workers": workers}
    return 503, {"status": not_ok, "failing": failing or deciding, "workers": workers}


def _missing(worker: str, down: Collection[str], starting: Collection[str]) -> str:
    """What a worker without an answer is shown as."""
    return DOWN if worker in down else STARTING if worker in starting else UNREACHABLE


def _fine(answer: Answer) -> bool:
    return answer is not None and answer[0] == 200
