#!/usr/bin/env bash
# Runs the autograder example end to end: builds the local test image and the chainlink
# binary, then runs examples/autograder.yaml with each stage's output shown as it comes.
#
#   bash scripts/example.sh              # debug build
#   CHAINLINK_RELEASE=1 bash scripts/example.sh
#
# Extra arguments go to `chainlink run` (for instance --json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/build-test-images.sh

if [[ "${CHAINLINK_RELEASE:-0}" == "1" ]]; then
  cargo build --release -p chainlink-cli
  chainlink=target/release/chainlink
else
  cargo build -p chainlink-cli
  chainlink=target/debug/chainlink
fi

echo "+ chainlink run --follow examples/autograder.yaml $*" >&2
exec "$chainlink" run --follow examples/autograder.yaml "$@"
