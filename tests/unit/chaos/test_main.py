"""`python -m chaos`'s arguments."""

from __future__ import annotations

import pytest

from chaos.__main__ import parser


def test_base_port_is_off_unless_given() -> None:
    assert parser().parse_args([]).base_port is None
    assert parser().parse_args(["--only", "cluster", "--base-port", "30000"]).base_port == 30000


@pytest.mark.parametrize("given", ["80", "65531", "3e4", "x"])
def test_a_base_port_without_room_for_the_cluster_is_refused(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parser().parse_args(["--base-port", given])
    assert refused.value.code == 2
    assert "--base-port" in capsys.readouterr().err


def test_the_highest_base_port_leaves_the_cluster_its_six_ports() -> None:
    assert parser().parse_args(["--base-port", "65530"]).base_port == 65530
