#!/usr/bin/env bash
# Copies the definitions of Kubernetes 1.20.2's published OpenAPI spec (api/openapi-spec/swagger.json
# of the test bed's source tree) into crates/merge/spec/, without descriptions and paths, so that the
# merge-table generator (`cargo run -p atoll-merge --bin merge-table`) runs offline.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-${ATOLL_TESTBED_CACHE:-$HOME/.cache/atoll/testbed}/build-1.20.2/src/api/openapi-spec/swagger.json}"
jq --indent 1 '{swagger, info, definitions: (.definitions | with_entries(.value |= walk(
    if type == "object" and ((.description? // null) | type) == "string" then del(.description) else . end)))}' \
    "$src" > "$root/crates/merge/spec/kubernetes-1.20.2.json"
