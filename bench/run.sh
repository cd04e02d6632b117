#!/usr/bin/env bash
# chainlink's benchmarks, in one command:
#
#   bash bench/run.sh                  # 5 rounds of everything
#   bash bench/run.sh --rounds 1       # arguments go to chainlink-bench (see its --help)
#
# Builds the release binary, the local test images and the Python module (into a venv made as
# scripts/test.sh makes its own), then runs chainlink-bench: every figure's contenders side by
# side, interleaved, round after round. The table goes to stdout; raw samples to
# target/bench/results.json. Needs the Docker engine, as the tests do.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== release build" >&2
cargo build --release --locked -p chainlink-bench >&2

echo "== test images" >&2
bash scripts/build-test-images.sh >&2

echo "== Python module" >&2
# A venv of its own (made as scripts/test.sh makes target/py-venv), so that reinstalling the
# module never races the test suite.
venv=target/bench/py-venv
python="${PYTHON:-python3}"
if ! "$venv/bin/python" -c '' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
# Always reinstalled, so that the module measured is the tree's (a release build, as pip makes it).
MATURIN_PEP517_ARGS="--locked" \
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >&2

echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg) (2+ per core makes the figures noisy)" >&2
mkdir -p target/bench
exec target/release/chainlink-bench \
  --python "$venv/bin/python" --script bench/python_bench.py \
  --json target/bench/results.json "$@"
