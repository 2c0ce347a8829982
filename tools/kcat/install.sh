#!/usr/bin/env bash
# Debian's kcat package: the README's kcat example for consumers is run by a test
# (tests/integration/test_consumers.py). No-op when it is there; without root or apt-get: one
# line on how to install it, and exit 0 (the test skips) unless CI is set.
set -euo pipefail
exec "$(dirname "$0")/../debian/install.sh" kcat \
  "https://github.com/edenhill/kcat#install (or brew install kcat)" kcat
