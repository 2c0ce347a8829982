#!/usr/bin/env bash
# Build helm from the Go module proxy (no download site is reachable here) into .cache/bin/helm.
#
#   tools/helm/install.sh            # no-op when .cache/bin/helm already is HELM_VERSION
#
# Env: HELM_VERSION (below), HELM_BIN (<repo>/.cache/bin/helm).
# About 1.5 min on 2 cores; the Go caches live under .cache/go while building and are removed
# afterwards (about 1 GiB), so the binary is the only thing kept.
set -euo pipefail

version="${HELM_VERSION:-v3.22.0}"
# The Kubernetes version `helm template` and `helm lint` assume without a cluster: the one of
# the k8s.io modules helm was built with, as helm's own Makefile sets it (else it says 1.20).
kube_minor="${HELM_KUBE_MINOR:-37}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${HELM_BIN:-$repo/.cache/bin/helm}"

if [[ -x "$bin" ]] && [[ "$("$bin" version --template '{{.Version}}' 2>/dev/null)" == "$version" ]]; then
  exit 0
fi
command -v go >/dev/null || { echo "helm: the Go toolchain (go) is needed to build helm $version" >&2; exit 1; }

work="$repo/.cache/go"
mkdir -p "$(dirname "$bin")" "$work"
echo "helm: building $version from the Go module proxy (about 1.5 min, once)" >&2
start=$SECONDS
pkg=helm.sh/helm/v3
ldflags="-s -w -X $pkg/internal/version.version=$version"
for var in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X $pkg/$var.k8sVersionMajor=1 -X $pkg/$var.k8sVersionMinor=$kube_minor"
done
# -modcacherw: the module cache is made writable so `rm -rf` can clean it.
log="$work/build.log"
GOBIN="$work/bin" GOMODCACHE="$work/mod" GOCACHE="$work/build" GOFLAGS="-modcacherw ${GOFLAGS:-}" \
  CGO_ENABLED=0 GOTOOLCHAIN=local \
  go install -trimpath -ldflags "$ldflags" "$pkg/cmd/helm@$version" >"$log" 2>&1 \
  || { tail -n 40 "$log" >&2; echo "helm: build failed (log: $log)" >&2; exit 1; }
mv "$work/bin/helm" "$bin"
rm -rf "$work"
echo "helm: $("$bin" version --short) in $((SECONDS - start)) s → $bin" >&2
