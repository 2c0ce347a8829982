"""Which listen addresses are served dual stack (IPv6 and IPv4 on one socket)."""

from __future__ import annotations

import pytest

from bridge.listen import dual_stack


@pytest.mark.parametrize(
    ("host", "both_families"),
    [
        ("::", True),
        ("0::0", True),  # the same address, spelled longer
        ("0.0.0.0", False),
        ("::1", False),  # a particular address has one family
        ("fd00::1", False),
        ("127.0.0.1", False),
        ("localhost", False),
    ],
)
def test_only_the_ipv6_any_address_is_served_dual_stack(host: str, both_families: bool) -> None:
    assert dual_stack(host) is both_families
