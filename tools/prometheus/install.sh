#!/usr/bin/env bash
# Debian's prometheus package: `promtool` checks the alert rules and a real `prometheus`
# evaluates every dashboard and alert expression in tests/deploy. No-op when both are there.
# Without root or apt-get: one line on how to install them, and exit 0 (tests skip) unless CI is set.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
# Without apt-get as root there is nothing to install with: say how, in one line; outside CI
# the tests that need the tools are then skipped (loudly, see tests/deploy/tools.py).
why=""
if ! command -v apt-get >/dev/null; then
  why="no apt-get here"; how="https://prometheus.io/download/ (or brew install prometheus)"
elif [[ "$(id -u)" != 0 ]]; then
  why="apt-get needs root"; how="sudo apt-get install prometheus"
fi
if [[ -n "$why" ]]; then
  if [[ -n "${CI:-}" ]]; then
    echo "prometheus/promtool missing ($why): install them with: $how (CI requires them)" >&2
    exit 1
  fi
  echo "prometheus/promtool missing ($why): install them with: $how; until then the tests that need them are skipped" >&2
  exit 0
fi
echo "prometheus: installing Debian's package (promtool and the server)" >&2
log="$(mktemp)"
{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; } \
  >"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
rm -f "$log"
# Where systemd runs, the package starts its own server on :9090: not wanted, stop it.
if [[ -d /run/systemd/system ]]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
prometheus --version 2>&1 | head -n 1 >&2
