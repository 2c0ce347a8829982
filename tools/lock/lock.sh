#!/usr/bin/env bash
# Re-pin requirements.lock from pyproject.toml's dependencies, each with every file's hash
# (all platforms, Python 3.11 up), with uv from PyPI. `make lock` runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=.venv/bin
"$bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
pinned=$(mktemp)
trap 'rm -f "$pinned"' EXIT
"$bin/uv" pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
    --no-header --quiet -o "$pinned"
{
    echo "# The runtime dependencies, pinned with their hashes: what the image installs (pip"
    echo "# --require-hashes) and \`make venv\` installs first, so the tests run what ships."
    echo "# Regenerate after changing pyproject.toml's dependencies: \`make lock\`."
    cat "$pinned"
} > requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) packages pinned"
