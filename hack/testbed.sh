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

if [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kube-controller-manager" ] && [ ${#need_packages[@]} -eq 0 ]; then
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

if [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kube-controller-manager" ]; then
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
rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
log "built: $BIN_DIR"
echo "$BIN_DIR"
