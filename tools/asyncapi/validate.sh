#!/usr/bin/env bash
# Validate AsyncAPI documents with the AsyncAPI project's own parser (@asyncapi/parser, pinned
# with every dependency in package-lock.json), installed once into .cache/asyncapi with `npm ci`.
#
#   tools/asyncapi/validate.sh [--install] [FILE...]   # default: bridge/schema/asyncapi.yaml
#
# Prints "valid: FILE" or "invalid: FILE" and the parser's diagnostics; exits 1 if any is
# invalid, 3 when Node.js 18+ or npm is missing (one line saying how to get it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$repo/.cache/asyncapi"

missing() {
    echo "validate.sh: $1 is missing: install Node.js 18 or newer with npm (e.g. apt-get install nodejs npm, or https://nodejs.org); it checks bridge/schema/asyncapi.yaml" >&2
    exit 3
}
command -v node >/dev/null 2>&1 || missing node
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 18 ] || missing "Node.js 18+ (found $(node --version))"

# Installed when absent or when the lock file changed; the log is shown only on failure.
if ! cmp -s "$here/package-lock.json" "$cache/package-lock.json" || [ ! -d "$cache/node_modules/@asyncapi/parser" ]; then
    command -v npm >/dev/null 2>&1 || missing npm
    mkdir -p "$cache"
    cp "$here/package.json" "$here/package-lock.json" "$cache/"
    echo "installing @asyncapi/parser into .cache/asyncapi (log: .cache/asyncapi/npm.log)" >&2
    (cd "$cache" && npm ci --ignore-scripts --no-audit --no-fund) >"$cache/npm.log" 2>&1 \
        || { tail -n 30 "$cache/npm.log" >&2; rm -rf "$cache/node_modules"; exit 1; }
fi
if [ "${1:-}" = "--install" ]; then
    shift
    [ "$#" -gt 0 ] || exit 0
fi
[ "$#" -gt 0 ] || set -- "$repo/bridge/schema/asyncapi.yaml"
ASYNCAPI_MODULES="$cache/node_modules" exec node "$here/validate.cjs" "$@"
