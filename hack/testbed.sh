#!/usr/bin/env bash
# Builds and caches the real-Kubernetes test bed: kube-apiserver and
# kube-controller-manager from Debian's `kubernetes` source package, plus
# etcd-server, kubectl-compatible tools and dig from Debian's archive.
#
# Idempotent: a second run with the binaries cached only checks and exits.
# The cache lives outside the repository, keyed by version:
#   ${ATOLL_TESTBED_CACHE:-$HOME/.cache/atoll/testbed}/kubernetes-<version>/bin
# Prints the bin directory on its last line of stdout.
set -euo pipefail

KUBE_VERSION="${ATOLL_KUBE_VERSION:-1.20.2}"
CACHE_ROOT="${ATOLL_TESTBED_CACHE:-$HOME/.cache/atoll/testbed}"
BIN_DIR="$CACHE_ROOT/kubernetes-$KUBE_VERSION/bin"
BUILD_DIR="$CACHE_ROOT/build-$KUBE_VERSION"
# Bump when the recipe changes what gets built; a cache from another recipe is rebuilt.
RECIPE="4: reflect2 1.0.2; OpenAPI type validators check only nil"

log() { echo "[testbed] $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_packages=()
for pair in go:golang-go rsync:rsync jq:jq dig:dnsutils dpkg-source:dpkg-dev; do
  cmd="${pair%%:*}"; pkg="${pair#*:}"
  command -v "$cmd" >/dev/null 2>&1 || need_packages+=("$pkg")
done
[ -x /usr/bin/etcd ] || need_packages+=(etcd-server)
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -f "$REFLECT2_SRC/reflect2.go" ] || need_packages+=(golang-github-modern-go-reflect2-dev)

cached() {
  [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kube-controller-manager" ] &&
    [ "$(cat "$BIN_DIR/RECIPE" 2>/dev/null)" = "$RECIPE" ]
}

if cached && [ ${#need_packages[@]} -eq 0 ]; then
  log "cached: $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq >&2
    apt_updated=1
  fi
}

if [ ${#need_packages[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_packages[*]}"
  apt_update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >&2
  # Debian starts etcd as a service on install; the test bed runs its own.
  as_root systemctl disable --now etcd >/dev/null 2>&1 || true
fi

if cached; then
  log "cached: $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

# deb-src for bookworm, so `apt-get source` can find the kubernetes package.
SRC_LIST=/etc/apt/sources.list.d/atoll-deb-src.sources
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  log "adding a bookworm deb-src entry at $SRC_LIST"
  as_root tee "$SRC_LIST" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_updated=0
fi
apt_update

mkdir -p "$BUILD_DIR"
cd "$BUILD_DIR"
# Debian versions the package as 1.20.5+really1.20.2, hence the loose glob.
if ! ls kubernetes_*"$KUBE_VERSION".orig.tar.* >/dev/null 2>&1; then
  log "downloading Debian's kubernetes source package"
  # Run unsandboxed-quietly: _apt cannot write into a root-owned cache dir.
  apt-get source --download-only kubernetes >&2
fi
orig=$(ls kubernetes_*"$KUBE_VERSION".orig.tar.* | head -n1)
SRC_TREE="$BUILD_DIR/src"
if [ ! -f "$SRC_TREE/Makefile" ]; then
  log "unpacking $orig"
  rm -rf "$SRC_TREE" && mkdir -p "$SRC_TREE"
  tar -xf "$orig" -C "$SRC_TREE" --strip-components=1
fi

# reflect2 1.0.1, vendored by Kubernetes 1.20, iterates maps through runtime internals that
# changed in Go 1.18: with Debian 12's Go 1.19, kube-apiserver segfaults ("fatal error: fault"
# in mapiterinit) when it decodes a custom resource. reflect2 1.0.2 is the upstream fix and is
# API-compatible; Debian packages it.
if ! cmp -s "$REFLECT2_SRC/reflect2.go" "$SRC_TREE/vendor/github.com/modern-go/reflect2/reflect2.go"; then
  log "replacing vendored reflect2 1.0.1 with Debian's 1.0.2"
  rm -rf "$SRC_TREE/vendor/github.com/modern-go/reflect2"
  mkdir -p "$SRC_TREE/vendor/github.com/modern-go/reflect2"
  find "$REFLECT2_SRC" -maxdepth 1 -type f -name '*.go' ! -name '*_test.go' \
    -exec cp {} "$SRC_TREE/vendor/github.com/modern-go/reflect2/" \;
fi

# The OpenAPI type validator (go-openapi/validate, and kube-openapi's copy that the CRD
# handler uses) treats a value as JSON null when
# reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(v)) holds. Comparing the reflect.Value
# structs was always false on the Go that Kubernetes 1.20 was released with, but since Go 1.19
# reflect.Zero shares one zero buffer, so "", 0 and false in a custom resource are refused as
# "must be of type string: null". Checking for nil alone restores 1.20's released behaviour.
for type_go in "$SRC_TREE/vendor/github.com/go-openapi/validate/type.go" \
  "$SRC_TREE/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go"; do
  if grep -q 'data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))' "$type_go"; then
    log "patching the null check of ${type_go#"$SRC_TREE/"} for Go 1.19"
    sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$type_go"
  fi
done

# GOPATH layout as debian/rules sets it up: .go/src/k8s.io/kubernetes -> tree.
export GOPATH="$BUILD_DIR/.go"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$SRC_TREE" "$GOPATH/src/k8s.io/kubernetes"
export GO111MODULE=off
export GOFLAGS=
export GOCACHE="$BUILD_DIR/.gocache"
export KUBE_GIT_VERSION="v$KUBE_VERSION"
export KUBE_GIT_TREE_STATE=clean
export KUBE_GIT_COMMIT=0000000000000000000000000000000000000000

log "building kube-apiserver and kube-controller-manager (several minutes)"
cd "$GOPATH/src/k8s.io/kubernetes"
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2

out="$GOPATH/src/k8s.io/kubernetes/_output/local/bin/linux/$(go env GOARCH)"
[ -d "$out" ] || out="$GOPATH/src/k8s.io/kubernetes/_output/bin"
mkdir -p "$BIN_DIR.tmp"
cp "$out/kube-apiserver" "$out/kube-controller-manager" "$BIN_DIR.tmp/"
echo "$RECIPE" > "$BIN_DIR.tmp/RECIPE"
rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
log "built: $BIN_DIR"
echo "$BIN_DIR"
