#!/usr/bin/env bash
# Runs every check and test Atoll has, setting up the real-Kubernetes test bed first.
# Safe to run on a fresh Debian 12 machine: hack/testbed.sh installs and builds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> test bed (kube-apiserver, kube-controller-manager, etcd)" >&2
ATOLL_TESTBED_BIN="$(./hack/testbed.sh | tail -n 1)"
export ATOLL_TESTBED_BIN

echo "==> cargo fmt --check" >&2
cargo fmt --all --check

echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
