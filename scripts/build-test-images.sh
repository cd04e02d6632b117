#!/usr/bin/env bash
# Builds the local test images that chainlink's tests run, without any
# registry: a root filesystem made from Debian's static busybox, imported
# with `docker import` (no build containers are created).
#
#   chainlink-test/busybox:latest            CMD ["sh"], no ENTRYPOINT
#   chainlink-test/busybox-entrypoint:latest ENTRYPOINT ["echo","image-entrypoint"], no CMD
#   chainlink-test/nocmd:latest              no CMD, no ENTRYPOINT
#
# All carry ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin and
# CHAINLINK_IMAGE_VAR=from-image, and the labels org.chainlink.test=true and
# org.chainlink.test.version=$IMAGE_VERSION.
#
# Idempotent: an image whose tag exists with the current version label is
# skipped. Bump IMAGE_VERSION to force a rebuild, or set
# CHAINLINK_FORCE_REBUILD=1.
set -euo pipefail

IMAGE_VERSION="1"

BUSYBOX_BIN="${BUSYBOX_BIN:-/bin/busybox}"
FORCE="${CHAINLINK_FORCE_REBUILD:-0}"

log() { echo "build-test-images: $*"; }

# Common image config, as `docker import --change` instructions.
COMMON_CHANGES=(
  --change 'ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin'
  --change 'ENV CHAINLINK_IMAGE_VAR=from-image'
  --change "LABEL org.chainlink.test=true org.chainlink.test.version=${IMAGE_VERSION}"
  --change 'WORKDIR /'
)

# tag -> its own extra --change instruction (empty: none).
declare -A EXTRA_CHANGES=(
  ["chainlink-test/busybox:latest"]='CMD ["sh"]'
  ["chainlink-test/busybox-entrypoint:latest"]='ENTRYPOINT ["echo", "image-entrypoint"]'
  ["chainlink-test/nocmd:latest"]=''
)
TAGS=(
  chainlink-test/busybox:latest
  chainlink-test/busybox-entrypoint:latest
  chainlink-test/nocmd:latest
)

if ! docker info >/dev/null 2>&1; then
  echo "build-test-images: cannot talk to the Docker engine (is dockerd running, are you in group docker?)" >&2
  exit 1
fi

# Which tags need (re)building?
todo=()
for tag in "${TAGS[@]}"; do
  have="$(docker image inspect -f '{{index .Config.Labels "org.chainlink.test.version"}}' "$tag" 2>/dev/null || true)"
  if [[ "$FORCE" != "1" && "$have" == "$IMAGE_VERSION" ]]; then
    log "$tag is up to date (version $IMAGE_VERSION), skipped"
  else
    todo+=("$tag")
  fi
done

if [[ ${#todo[@]} -eq 0 ]]; then
  log "all test images up to date"
  exit 0
fi

# Static busybox from Debian.
if [[ ! -x "$BUSYBOX_BIN" ]]; then
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "build-test-images: $BUSYBOX_BIN is missing; install Debian's busybox-static (as root)" >&2
    exit 1
  fi
  log "installing busybox-static"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq busybox-static >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq busybox-static >/dev/null
  fi
fi
if ! applet_list="$("$BUSYBOX_BIN" --list 2>/dev/null)" || [[ -z "$applet_list" ]]; then
  echo "build-test-images: $BUSYBOX_BIN does not work as busybox" >&2
  exit 1
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/chainlink-test-images.XXXXXX")"
trap 'rm -rf "$workdir"' EXIT

# Root filesystem.
root="$workdir/rootfs"
mkdir -p "$root"/{bin,etc,tmp,root,usr,proc,sys,dev,var,run,home}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
install -m 0755 "$BUSYBOX_BIN" "$root/bin/busybox"
applets=0
while IFS= read -r applet; do
  [[ -z "$applet" || "$applet" == "busybox" || "$applet" == */* ]] && continue
  ln -sf busybox "$root/bin/$applet"
  applets=$((applets + 1))
done <<< "$applet_list"
ln -s bin "$root/sbin"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
chmod 0644 "$root/etc/passwd" "$root/etc/group"

tarball="$workdir/rootfs.tar"
tar -C "$root" --numeric-owner --owner=0 --group=0 --sort=name \
  --mtime='2020-01-01 00:00:00' -cf "$tarball" .
banner="$("$root/bin/busybox" 2>&1 || true)"
banner="${banner%%$'\n'*}"
log "root filesystem: ${banner%% multi-call*}, $applets applets"

for tag in "${todo[@]}"; do
  changes=("${COMMON_CHANGES[@]}")
  if [[ -n "${EXTRA_CHANGES[$tag]}" ]]; then
    changes+=(--change "${EXTRA_CHANGES[$tag]}")
  fi
  old_id="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
  id="$(docker import "${changes[@]}" --message "chainlink test image v${IMAGE_VERSION}" "$tarball" "$tag")"
  log "built $tag (${id:7:12}, version $IMAGE_VERSION)"
  # Drop the image this tag pointed at before, now untagged, unless
  # something (a container, another tag) still uses it.
  if [[ -n "$old_id" && "$old_id" != "$id" ]]; then
    if docker image rm "$old_id" >/dev/null 2>&1; then
      log "removed previous $tag (${old_id:7:12})"
    fi
  fi
done
