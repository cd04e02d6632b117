#!/usr/bin/env bash
# The project's test command. .ci/run calls this after the test images are
# built; developers can run it directly too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo test --workspace --locked

# The Python module: built by pip (maturin backend) into a venv of its own,
# then tested against the real engine. PYTHON picks the interpreter (>= 3.9).
venv=target/py-venv
python="${PYTHON:-python3}"
if ! "$venv/bin/python" -c '' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check pytest
# --locked as for cargo above; reinstalled even when the version is unchanged.
MATURIN_PEP517_ARGS="--locked" \
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps .
"$venv/bin/python" -m pytest python/tests -q
