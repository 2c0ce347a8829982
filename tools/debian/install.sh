#!/usr/bin/env bash
# Install a Debian package when any of its commands is missing:
#   tools/debian/install.sh PACKAGE HOW-ELSEWHERE COMMAND... [--then SHELL-COMMAND]
# No-op when every command is there. Without apt-get or root: one line on how to install it, and
# exit 0 (the tests needing it skip, saying so) unless CI is set, where it fails. --then runs
# after an install only (e.g. to stop a service the package started).
set -euo pipefail

package="$1"; elsewhere="$2"; shift 2
commands=(); then=""
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--then" ]]; then then="$2"; shift 2; else commands+=("$1"); shift; fi
done
missing=0
for command in "${commands[@]}"; do command -v "$command" >/dev/null || missing=1; done
[[ "$missing" == 0 ]] && exit 0

names="$(IFS=/; echo "${commands[*]}")"
why=""
if ! command -v apt-get >/dev/null; then
  why="no apt-get here"; how="$elsewhere"
elif [[ "$(id -u)" != 0 ]]; then
  why="apt-get needs root"; how="sudo apt-get install $package"
fi
if [[ -n "$why" ]]; then
  if [[ -n "${CI:-}" ]]; then
    echo "$names missing ($why): install them with: $how (CI requires them)" >&2
    exit 1
  fi
  echo "$names missing ($why): install them with: $how; until then the tests that need them are skipped" >&2
  exit 0
fi
echo "$package: installing Debian's package" >&2
log="$(mktemp)"
{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package"; } \
  >"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
rm -f "$log"
if [[ -n "$then" ]]; then bash -c "$then"; fi
