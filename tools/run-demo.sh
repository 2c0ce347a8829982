#!/usr/bin/env bash
# `make run`, `demo-headless` and `bridge`: the command, with the local broker started for it and,
# if this script started it, stopped again afterwards, so the end or Ctrl-C leaves nothing running.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${KAFKA_PORT:-9092}"

started=0
python3 "$here/kafka/probe.py" --quiet "127.0.0.1:$port" || started=1
"$here/kafka/kafka.sh" up || exit 1
# Ctrl-C reaches the whole process group: the demo handles it; this script must outlive it.
trap '' INT TERM
"$@"
status=$?
echo
if (( started )); then
  "$here/kafka/kafka.sh" down
else
  echo "(the Kafka broker was running before: left running; 'make kafka-down' stops it)"
fi
exit $status
