#!/usr/bin/env bash
# Debian's prometheus package: `promtool` checks the alert rules and a real `prometheus`
# evaluates every dashboard and alert expression in tests/deploy. No-op when both are there.
# Without root or apt-get: one line on how to install them, and exit 0 (tests skip) unless CI is set.
set -euo pipefail
# Where systemd runs, the package starts its own server on :9090: not wanted, stop it.
exec "$(dirname "$0")/../debian/install.sh" prometheus \
  "https://prometheus.io/download/ (or brew install prometheus)" prometheus promtool \
  --then 'if [[ -d /run/systemd/system ]]; then systemctl disable --now prometheus.service >/dev/null 2>&1 || true; fi; prometheus --version 2>&1 | head -n 1 >&2'
