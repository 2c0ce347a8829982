#!/usr/bin/env bash
# Debian's iptables package: tests/integration/test_rolling_restart.py cuts a cluster node off the
# network with it (a host that vanished). No-op when it is there; without root or apt-get: one
# line on how to install it, and exit 0 (the test skips, saying why) unless CI is set.
set -euo pipefail
exec "$(dirname "$0")/../debian/install.sh" iptables \
  "your distribution's iptables package (the test needs root too)" iptables
