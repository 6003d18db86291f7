#!/usr/bin/env bash
# Fuzzes Atoll's parsers: every cargo-fuzz target in fuzz/ (or those named in FUZZ_TARGETS),
# one after another, each for FUZZ_SECONDS (default 60), starting from its committed corpus
# fuzz/corpus/<target>/, which grows with every new input that reaches new code (minimize it
# with `cargo fuzz cmin <target>` before committing). Exits non-zero if any target crashed
# (a panic, a broken invariant, a timeout or running out of memory); the crashing input is in
# fuzz/artifacts/<target>/.
#
# Only stable Rust is needed: cargo-fuzz's -Z flags are accepted with RUSTC_BOOTSTRAP=1.
# AddressSanitizer is used when the toolchain ships its runtime, else no sanitizer.
#
#   FUZZ_SECONDS=10 ./hack/fuzz.sh                 # CI: ten seconds per target
#   FUZZ_TARGETS="patch body" ./hack/fuzz.sh       # some targets only
#   FUZZ_SANITIZER=none ./hack/fuzz.sh             # force the sanitizer (address, none)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-60}"
# A single input running longer than this is a crash (a hang or a quadratic blow-up).
timeout="${FUZZ_TIMEOUT:-10}"
# Memory a single run may hold, MiB (libFuzzer's own default, made explicit).
rss_limit="${FUZZ_RSS_LIMIT_MB:-2048}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

if [ -z "${FUZZ_SANITIZER:-}" ]; then
  host="$(rustc -vV | sed -n 's/^host: //p')"
  if compgen -G "$(rustc --print sysroot)/lib/rustlib/$host/lib/librustc-*_rt.asan.a" >/dev/null; then
    FUZZ_SANITIZER=address
  else
    FUZZ_SANITIZER=none
  fi
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
echo "==> building the fuzz targets (sanitizer: $FUZZ_SANITIZER)" >&2
cargo fuzz build --sanitizer "$FUZZ_SANITIZER"

crashed=()
for target in $targets; do
  echo "==> $target: ${seconds}s" >&2
  mkdir -p "corpus/$target"
  dict=()
  if [ -f "dict/$target.dict" ]; then
    dict=("-dict=dict/$target.dict")
  fi
  if ! cargo fuzz run --sanitizer "$FUZZ_SANITIZER" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss_limit" \
    -print_final_stats=1 "${dict[@]}"; then
    crashed+=("$target")
  fi
done

if [ "${#crashed[@]}" -gt 0 ]; then
  echo "==> crashed: ${crashed[*]} (inputs in fuzz/artifacts/<target>/; reproduce with" \
    "RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <input>)" >&2
  exit 1
fi
echo "==> no crash" >&2
