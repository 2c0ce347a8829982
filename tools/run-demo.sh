#!/usr/bin/env bash
# `make run`, `demo-headless` and `bridge`: the command, with the local broker started for it and,
# if this script started it, stopped again afterwards, so the end or Ctrl-C leaves nothing running.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${KAFKA_PORT:-9092}"

started=0
python3 "$here/kafka/probe.py" --quiet "127.0.0.1:$port" || started=1
"$here/kafka/kafka.sh" up || exit 1
# Ctrl-C reaches the whole process group: the command handles it; this script must outlive it.
# A SIGTERM may reach this script alone (make passes its own on to its recipe; a supervisor
# signals the pid it started): passed on, or the command would run on and this script wait.
# Run in the background so the trap runs while waiting; stdin kept (a background command's
# default is /dev/null).
trap '' INT
"$@" <&0 &
child=$!
forwarded=0
trap 'forwarded=1; kill -TERM "$child" 2>/dev/null' TERM
wait "$child"
status=$?
# A trapped signal ends `wait` early (status 143) with the command still stopping: wait again.
while (( forwarded )); do
  forwarded=0
  wait "$child" 2>/dev/null
  again=$?
  (( again == 127 )) || status=$again
done
trap '' TERM
echo
if (( started )); then
  "$here/kafka/kafka.sh" down
else
  echo "(the Kafka broker was running before: left running; 'make kafka-down' stops it)"
fi
exit $status
