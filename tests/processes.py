"""Processes the tests did not start themselves (a supervisor's workers): are they gone?"""

from __future__ import annotations

from pathlib import Path


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (exited, not yet reaped by its parent or init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
