"""Where the ACLs the bridge's Kafka principal needs are listed, named by every refusal. Pure."""

from __future__ import annotations

# Said in each error a missing ACL causes, by both stages: aiokafka's names no ACL.
ACLS = "deploy/README.md, Strimzi"
