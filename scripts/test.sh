#!/usr/bin/env bash
# The project's test command (the README's second line; .ci/run runs exactly this): sets up
# what the tests need, runs every Rust and Python test against the real engine, then fails if
# anything of ours is left behind.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

# What of ours already exists before the suite (a developer's killed run, say) is not the
# suite's doing: the check at the end looks only at what is new.
ours() {
  docker ps -aq --no-trunc --filter label=org.chainlink.managed
  docker volume ls -q --filter label=org.chainlink.managed
  # Run directories, in a user's private directory chainlink-<uid> (which stays, empty, between
  # runs: removing it would give its name away).
  find "${TMPDIR:-/tmp}" -maxdepth 3 \( -name 'chainlink-run-*' -o -name '.chainlink-new-*' \) 2>/dev/null || true
}
before=$(ours | sort)

printf '\n==== rust tests ====\n'
cargo test --workspace --locked

printf '\n==== python tests ====\n'
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

printf '\n==== leftovers ====\n'
# Every test checks its own runs; this catches what slipped between them.
left=$(comm -13 <(echo "$before") <(ours | sort) | sed '/^$/d')
if [[ -n "$left" ]]; then
  echo "left behind by the suite (labelled containers or volumes, run directories):" >&2
  echo "$left" >&2
  exit 1
fi
[[ -z "$before" ]] || echo "(already there before the suite, not counted: $(echo "$before" | wc -l) item(s))"
echo "nothing left: no labelled container or volume, no run directory"
