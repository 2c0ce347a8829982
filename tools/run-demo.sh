#!/usr/bin/env bash
# `make run`, `demo-headless` and `bridge`: the command, with the local broker started for it and,
# if this script started it, stopped again afterwards, so the end or Ctrl-C leaves nothing running.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${KAFKA_PORT:-9092}"

started=0
# Neither answering nor starting: a broker not answering yet may be another run's (`make run` or
# `make kafka-up` in another terminal), which stopping at this run's end would pull from under it.
python3 "$here/kafka/probe.py" --quiet "127.0.0.1:$port" || "$here/kafka/kafka.sh" running \
  || started=1
# A Ctrl-C or SIGTERM while the broker starts (seconds for a JVM) ended this script at once,
# leaving the broker it launched (in a session of its own) running: noted instead, then the
# broker is stopped if this script started it, and the command is not run.
signalled=0
trap 'signalled=130' INT
trap 'signalled=143' TERM
"$here/kafka/kafka.sh" up
up=$?
# Ctrl-C reaches the whole process group: the command handles it; this script must outlive it.
# A SIGTERM may reach this script alone (make passes its own on to its recipe; a supervisor
# signals the pid it started): passed on, or the command would run on and this script wait.
# Run in the background so the trap runs while waiting; stdin kept (a background command's
# default is /dev/null).
trap '' INT
if (( signalled )); then
  trap '' TERM
  if (( started )); then "$here/kafka/kafka.sh" down; fi
  exit "$signalled"
fi
(( up == 0 )) || exit 1  # kafka.sh said why, and stopped a broker it started and gave up on
"$@" <&0 &
child=$!
forwarded=0
trap 'forwarded=1; kill -TERM "$child" 2>/dev/null' TERM
# One that came as the command was being started is passed on too.
if (( signalled )); then forwarded=1; kill -TERM "$child" 2>/dev/null; fi
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
  # `make kafka-down` alone stops 9092's broker, not this one.
  down="make kafka-down"
  if [[ "$port" != 9092 ]]; then down="make kafka-down KAFKA_PORT=$port"; fi
  echo "(the Kafka broker was running before: left running; '$down' stops it)"
fi
exit $status
