from bridge.sink.writable import (
    PartitionState,
    brokers_to_try,
    takes_writes,
    writability,
)

UP = {1, 2, 3}


def test_a_partition_with_its_leader_and_min_insync_replicas_up_takes_writes() -> None:
    assert takes_writes(PartitionState(1, (1, 2, 3)), UP, 2)
    assert takes_writes(PartitionState(1, (1, 2)), UP, 2)


def test_a_partition_without_a_leader_or_with_its_leader_down_does_not() -> None:
    assert not takes_writes(PartitionState(-1, (2, 3)), UP, 2)
    assert not takes_writes(PartitionState(1, (1, 2, 3)), {2, 3}, 2)


def test_an_isr_the_controller_could_not_shrink_counts_only_the_replicas_up() -> None:
    # Two of three nodes down take the controllers' quorum: node 2 stays "in sync", dead.
    assert not takes_writes(PartitionState(3, (2, 3)), {3}, 2)
    # One just died, the ISR not shrunk yet: two up are min.insync, a stall but no outage.
    assert takes_writes(PartitionState(3, (1, 2, 3)), {2, 3}, 2)


def test_an_isr_smaller_than_min_insync_does_not_take_writes() -> None:
    assert not takes_writes(PartitionState(1, (1, 2)), UP, 3)


def test_one_partition_that_cannot_take_writes_among_others_is_not_an_outage() -> None:
    partitions = [PartitionState(-1, ()), PartitionState(2, (2, 3)), PartitionState(3, (3, 2))]
    verdict = writability(partitions, UP, 2)
    assert (verdict.writable, verdict.partitions, verdict.ready) == (2, 3, True)


def test_no_partition_that_can_take_writes_is_unready() -> None:
    partitions = [PartitionState(2, (2, 3)), PartitionState(3, (3, 2))]
    verdict = writability(partitions, {3}, 2)
    assert (verdict.writable, verdict.ready) == (0, False)


def test_a_topic_not_in_the_metadata_yet_is_left_to_the_metadata_answer() -> None:
    assert writability([], set(), 2).ready


def test_the_brokers_tried_are_the_leaders_and_in_sync_replicas() -> None:
    partitions = [PartitionState(-1, (4,)), PartitionState(2, (2, 3)), PartitionState(1, (1,))]
    assert brokers_to_try(partitions) == {1, 2, 3, 4}
