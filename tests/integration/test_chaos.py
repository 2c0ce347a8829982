"""The fault matrix's harness exercised in `make test`: a shortened replicas scenario.

Three real replicas behind the harness's round robin, one SIGTERMed and restarted, one
SIGKILLed and restarted, under load; the checker must find nothing lost, doubled or reordered.
The full matrix is `make chaos`; this keeps its code from rotting between runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.harness import Context
from chaos.scenarios.replicas import replicas

pytestmark = pytest.mark.timeout(240)


async def test_replicas_killed_and_restarted_under_load_lose_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ctx = Context(tmp_path, rate=100.0, scale=0.25, existing_bootstrap=kafka_bootstrap)
    outcome = await replicas(ctx, rolling=False)
    print(outcome)
    counts = outcome.counts
    assert counts.acknowledged > 0.5 * counts.sent, counts
    assert outcome.failures == [], outcome.failures
    assert outcome.peak_rss_mib > 0
