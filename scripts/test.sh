#!/usr/bin/env bash
# The project's test command. .ci/run calls this after the test images are
# built; developers can run it directly too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo test --workspace --locked
