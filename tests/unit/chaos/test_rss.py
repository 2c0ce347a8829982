"""Peak RSS from /proc/<pid>/status."""

from __future__ import annotations

import os

from chaos.rss import PeakRss, hwm_kib, parse_hwm_kib


def test_vmhwm_is_parsed_from_the_status_text() -> None:
    status = "Name:\tpython\nVmPeak:\t  999 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n"
    assert parse_hwm_kib(status) == 12345
    assert parse_hwm_kib("Name:\tkthreadd\n") is None


async def test_the_sampler_keeps_the_peak_of_live_processes_only() -> None:
    own = hwm_kib(os.getpid())
    assert own is not None
    assert own > 0
    gone = 2**22 + 7  # above pid_max's default: no such process
    async with PeakRss(lambda: [os.getpid(), gone], every=0.01) as rss:
        pass
    assert set(rss.peaks) == {os.getpid()}
    assert rss.peak_mib >= own / 1024
