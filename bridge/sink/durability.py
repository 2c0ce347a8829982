"""How many copies of a record acks=all waits for, on the topics the bridge uses. Pure.

acks=all waits for the in-sync replicas only, and a topic's min.insync.replicas (the cluster's
default, 1, unless set) is how few of them may be left: at 1, an acknowledged record can live on
the leader alone and be lost with it, whatever the replication factor.
"""

from __future__ import annotations

import logging

MIN_INSYNC_REPLICAS = "min.insync.replicas"
# Two copies: a record acknowledged survives the loss of any one broker.
WANTED_COPIES = 2


def min_insync_for(factor: int, cluster_default: int | None) -> int | None:
    """The min.insync.replicas to create a topic of `factor` replicas with; None: leave it to the
    cluster, whose default (`cluster_default`, None when unknown) asks more already."""
    # One replica fewer than the factor, so one broker down (a rolling restart) never stops
    # writes: at 2 of 2, every restart would answer webhooks 503 until Pinecall gave up.
    wanted = max(1, min(WANTED_COPIES, factor - 1))
    if cluster_default is not None and cluster_default > wanted:
        return None
    return wanted


def durability_problem(factor: int, min_insync: str | None) -> tuple[int, str, str] | None:
    """How loud, what, and as which `topic_problem` label, an existing topic's replication
    factor and effective min.insync.replicas risk; None when nothing (or the value is unknown)."""
    try:
        required = int(min_insync) if min_insync is not None else None
    except ValueError:
        required = None
    if required is None:
        return None
    if required > factor:
        return (
            logging.ERROR,
            "a topic's min.insync.replicas is above its replication factor: Kafka refuses every"
            " write to it (NotEnoughReplicas); lower min.insync.replicas to the factor",
            "unwritable",
        )
    if factor > 1 and required == factor:
        return (
            logging.WARNING,
            "a topic needs every replica in sync to take a write (min.insync.replicas equal to"
            " its replication factor): each broker restart stops writes to it, and webhooks get"
            " 503 until Pinecall's retries run out; set min.insync.replicas below the factor",
            "all_in_sync",
        )
    if factor > 2 and required <= 1:
        return (
            logging.WARNING,
            "a topic acknowledges records held by its leader alone (min.insync.replicas 1 with"
            " 3 or more replicas): one broker lost loses records the bridge was told were"
            " written; set the topic's min.insync.replicas to 2",
            "leader_alone",
        )
    return None
