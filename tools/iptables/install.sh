#!/usr/bin/env bash
# Debian's iptables package: tests/integration/test_rolling_restart.py cuts a cluster node off the
# network with it (a host that vanished); and iproute2's ss, with which
# tests/integration/test_kafka_security.py closes a process's Kafka connections (they must
# authenticate again). No-op when they are there; without root or apt-get: one line on how to
# install them, and exit 0 (the tests skip, saying why) unless CI is set.
set -euo pipefail
here="$(dirname "$0")"
"$here/../debian/install.sh" iproute2 "your distribution's iproute2 package (ss -K needs root too)" ss
exec "$here/../debian/install.sh" iptables \
  "your distribution's iptables package (the test needs root too)" iptables
