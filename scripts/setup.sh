#!/usr/bin/env bash
# Makes a fresh machine of this kind ready for the tests and the examples, idempotently and
# quickly when it already is: Debian packages, the Docker engine reachable, the unprivileged
# user part of the suite runs as, the local test images. Root is needed only for what is
# missing (packages, the user).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==== %s ====\n' "$*"; }

# Debian packages the tests need:
#   busybox-static            root filesystem of the local test images
#   docker-registry           a local registry for pull tests
#   apache2-utils             htpasswd, for registry auth in pull tests
APT_PACKAGES=(busybox-static docker-registry apache2-utils)
CI_USER=chainlink-ci

section "packages"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "already installed: ${APT_PACKAGES[*]}"
else
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "missing packages ${missing[*]} and not root: cannot install" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_log="$(mktemp)"
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
    tail -n 40 "$apt_log" >&2
    rm -f "$apt_log"
    echo "apt-get failed" >&2
    exit 1
  fi
  rm -f "$apt_log"
  echo "installed: ${missing[*]}"
fi

section "docker engine"
docker_up() { docker info >/dev/null 2>&1; }
if ! docker_up; then
  echo "engine not reachable yet; waiting up to 30s"
  for _ in $(seq 30); do docker_up && break; sleep 1; done
fi
if ! docker_up && [[ "$(id -u)" -eq 0 ]] && command -v service >/dev/null; then
  echo "trying: service docker start"
  service docker start || true
  for _ in $(seq 30); do docker_up && break; sleep 1; done
fi
if ! docker_up; then
  echo "cannot talk to the Docker engine at ${DOCKER_HOST:-/var/run/docker.sock}" >&2
  exit 1
fi
docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}'

section "ci user"
if [[ "$(id -u)" -eq 0 ]]; then
  getent group docker >/dev/null || groupadd docker
  if ! id "$CI_USER" >/dev/null 2>&1; then
    useradd -m -G docker "$CI_USER"
    echo "created $CI_USER (group docker)"
  elif ! id -nG "$CI_USER" | tr ' ' '\n' | grep -qx docker; then
    usermod -aG docker "$CI_USER"
    echo "added $CI_USER to group docker"
  else
    echo "$CI_USER exists, in group docker"
  fi
else
  echo "not root: skipped (user $CI_USER not managed)"
fi

section "toolchain"
cargo --version
rustc --version
python3 --version
python3 -m pip --version

section "test images"
bash scripts/build-test-images.sh
