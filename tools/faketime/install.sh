#!/usr/bin/env bash
# Debian's faketime package (with libfaketime): tests/integration/test_clock_steps.py steps a
# running bridge's wall clock with it. No-op when it is there; without root or apt-get: one line
# on how to install it, and exit 0 (the test skips, saying why) unless CI is set.
set -euo pipefail
exec "$(dirname "$0")/../debian/install.sh" faketime \
  "your distribution's faketime/libfaketime package (or https://github.com/wolfcw/libfaketime)" faketime
