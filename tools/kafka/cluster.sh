#!/usr/bin/env bash
# Local 3-node Kafka cluster (each node a combined broker+controller, kafka.sh) for tests of
# what production runs: RF 3, min.insync.replicas 2, nodes stopped and restarted one by one.
#
#   tools/kafka/cluster.sh up|down|status        every node (up starts them together)
#   tools/kafka/cluster.sh up|down|kill|status N one node (1-3): down is a controlled
#                                                shutdown (SIGTERM), kill a crash (SIGKILL)
#
# Env: KAFKA_CLUSTER_PORT (9192): node N listens on KAFKA_CLUSTER_PORT + 2(N-1), its
#      controller on the port after it (9192-9197 by default);
#      KAFKA_CLUSTER_DIR (<repo>/.cache/kafka-cluster/<port>): node N's data in nodeN/;
#      KAFKA_HEAP (-Xmx256m -Xms128m), KAFKA_JVM_OPTS (kafka.sh's, C1 only); the rest as for
#      kafka.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/../.." && pwd))"

nodes=3
base="${KAFKA_CLUSTER_PORT:-9192}"
dir="${KAFKA_CLUSTER_DIR:-$repo/.cache/kafka-cluster/$base}"
export KAFKA_HEAP="${KAFKA_HEAP:--Xmx256m -Xms128m}"
# C1 only: three JVMs starting on two cores spend most of their start-up in the C2 compiler.
export KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true}"

say() { echo "kafka-cluster[$base]: $*" >&2; }
port_of() { echo $((base + 2 * ($1 - 1))); }

# What `StorageTool random-uuid` prints (16 random bytes, URL-safe base64, unpadded, never
# starting with "-"), without a JVM start for each: on a busy machine those take seconds.
uuid() {
  local id=-
  while [[ "$id" == -* ]]; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  done
  echo "$id"
}

# The cluster id and each controller's metadata directory id are minted once and kept: every
# node must be formatted with the same ones, and a restarted node finds its data as it was.
identity() {
  mkdir -p "$dir"
  if [[ ! -f "$dir/cluster.env" ]]; then
    local n voters=""
    for n in $(seq "$nodes"); do
      voters+="${voters:+,}$n@127.0.0.1:$(($(port_of "$n") + 1)):$(uuid)"
    done
    printf 'KAFKA_CLUSTER_ID=%s\nKAFKA_INITIAL_CONTROLLERS=%s\n' "$(uuid)" "$voters" \
      >"$dir/cluster.env.tmp"
    mv "$dir/cluster.env.tmp" "$dir/cluster.env"
  fi
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
}

node() {
  local n="$1" command="$2" port bootstrap="" m
  [[ "$n" =~ ^[1-9][0-9]*$ ]] && (( n <= nodes )) || { say "no node $n (1-$nodes)"; exit 2; }
  port="$(port_of "$n")"
  for m in $(seq "$nodes"); do bootstrap+="${bootstrap:+,}127.0.0.1:$(($(port_of "$m") + 1))"; done
  KAFKA_PORT="$port" KAFKA_DATA_DIR="$dir/node$n" \
    KAFKA_CLUSTER_ID="$KAFKA_CLUSTER_ID" KAFKA_INITIAL_CONTROLLERS="$KAFKA_INITIAL_CONTROLLERS" \
    KAFKA_CONFIG_OVERLAY="$here/cluster.properties.in" \
    KAFKA_CONFIG_VAR_NODE_ID="$n" KAFKA_CONFIG_VAR_QUORUM_BOOTSTRAP="$bootstrap" \
    "$here/kafka.sh" "$command"
}

command="${1:-}"
case "$command" in
  up | down | kill | status) ;;
  *) echo "usage: $0 up|down|status [N] | kill N" >&2; exit 2 ;;
esac
identity
if [[ -n "${2:-}" ]]; then
  node "$2" "$command"
elif [[ "$command" == kill ]]; then
  echo "usage: $0 kill N" >&2; exit 2
elif [[ "$command" == up ]]; then
  # Together: no node answers before a quorum of controllers has elected a leader.
  pids=()
  for n in $(seq "$nodes"); do node "$n" up & pids+=($!); done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  (( failed == 0 )) || { say "a node did not start"; exit 1; }
  say "up: bootstrap $(for n in $(seq "$nodes"); do printf '127.0.0.1:%s,' "$(port_of "$n")"; done | sed 's/,$//')"
elif [[ "$command" == down ]]; then
  # Together too: a node stopped after the others waits for a quorum that is gone (30 s, then
  # SIGKILL), while nodes stopped at once mostly finish their controlled shutdown; the last one
  # may still wait for the others' quorum, so it is not given the full 30 s.
  pids=()
  for n in $(seq "$nodes"); do KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-10}" node "$n" down & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
else
  status=0
  for n in $(seq "$nodes"); do node "$n" status || status=1; done
  exit "$status"
fi
