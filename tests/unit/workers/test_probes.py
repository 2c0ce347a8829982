"""The pod's /healthz and /readyz: fine only when every worker answered fine (or is down)."""

from __future__ import annotations

from bridge.workers.probes import pod_answer


def test_every_worker_ready_is_a_ready_pod() -> None:
    status, body = pod_answer({"0": (200, "ready"), "1": (200, "ready")}, "ready", "not_ready")
    assert status == 200
    assert body == {"status": "ready", "workers": {"0": "ready", "1": "ready"}}


def test_an_unreachable_worker_makes_the_pod_unready_and_is_named() -> None:
    status, body = pod_answer({"0": (200, "ready"), "1": None}, "ready", "not_ready")
    assert status == 503
    assert body == {
        "status": "not_ready",
        "failing": ["1"],
        "workers": {"0": "ready", "1": "unreachable"},
    }


def test_a_worker_answering_503_says_why() -> None:
    answers = {"0": (503, "kafka_client_dead"), "1": (200, "alive"), "2": (503, "stopping")}
    status, body = pod_answer(answers, "alive", "not_alive")
    assert status == 503
    assert body["failing"] == ["0", "2"]
    assert body["workers"]["0"] == "kafka_client_dead"


def test_only_the_counted_workers_decide_the_others_are_shown() -> None:
    answers = {"0": (200, "ready"), "1": None}
    status, body = pod_answer(answers, "ready", "not_ready", counted=["0"])
    assert (status, body) == (
        200,
        {"status": "ready", "workers": {"0": "ready", "1": "unreachable"}},
    )
    status, body = pod_answer(
        {"0": (503, "stopping"), "1": (200, "ready")}, "ready", "not_ready", ["0"]
    )
    assert (status, body["failing"]) == (503, ["0"])


def test_a_worker_down_is_excused_while_another_counted_one_is_ready() -> None:
    answers = {"0": (200, "ready"), "1": None, "2": None}
    status, body = pod_answer(answers, "ready", "not_ready", ["0", "1"], down=["1"])
    assert (status, body) == (
        200,
        {"status": "ready", "workers": {"0": "ready", "1": "down", "2": "unreachable"}},
    )


def test_a_worker_down_is_not_excused_when_none_other_is_ready() -> None:
    status, body = pod_answer({"0": None, "1": None}, "ready", "not_ready", down=["0", "1"])
    assert (status, body["failing"]) == (503, ["0", "1"])
    answers = {"0": (503, "waiting_for_kafka"), "1": None}
    status, body = pod_answer(answers, "ready", "not_ready", down=["1"])
    assert (status, body["failing"], body["workers"]["1"]) == (503, ["0"], "down")


def test_a_worker_starting_is_shown_and_not_excused() -> None:
    answers = {"0": (200, "ready"), "1": None}
    status, body = pod_answer(answers, "ready", "not_ready", down=(), starting=["1"])
    assert (status, body["failing"], body["workers"]["1"]) == (503, ["1"], "starting")


def test_a_worker_down_is_shown_but_not_excused_for_liveness() -> None:
    answers = {"0": (200, "alive"), "1": None}
    status, body = pod_answer(answers, "alive", "not_alive", down=["1"], excuse_down=False)
    assert (status, body) == (
        503,
        {"status": "not_alive", "failing": ["1"], "workers": {"0": "alive", "1": "down"}},
    )
