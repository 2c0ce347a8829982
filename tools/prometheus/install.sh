#!/usr/bin/env bash
# Debian's prometheus package: `promtool` checks the alert rules and a real `prometheus`
# evaluates every dashboard and alert expression in tests/deploy. No-op when both are there.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "prometheus/promtool missing: install Debian's package as root (apt-get install prometheus)," >&2
  echo "then run make again. tests/deploy needs them." >&2
  exit 1
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
