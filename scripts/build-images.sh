#!/usr/bin/env bash
# Builds the controller and agent images (containers/*.Containerfile) with
# buildah, without a registry or a daemon, and with --smoke runs each once:
# the controller must answer /readyz, the agent print its version.
#
# The base is made here from Debian's packages by mmdebstrap (glibc, CA
# roots, the Vulkan loader) and imported as localhost/flotilla-runtime;
# it serves as the runtime of both images and as the stage that takes in
# the binaries, which are built outside (cargo, BINDIR=debug or release
# under target/). Builds run with chroot isolation and the vfs storage
# driver, which need no cgroups, overlay mounts or user namespaces, so
# they also work inside a container (as CI runs).
#
# Usage: BINDIR=release scripts/build-images.sh [--smoke]
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-images: $*" >&2; }
BINDIR=${BINDIR:-release}
smoke=false
[ "${1:-}" = --smoke ] && smoke=true

need=()
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (Debian's packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
for binary in flotilla-controller flotilla-agent; do
  [ -x "target/$BINDIR/$binary" ] || { log "target/$BINDIR/$binary is missing: cargo build first"; exit 1; }
done

# Sandboxes (CI's included) may forbid raising rlimits; keep the process's.
state=${FLOTILLA_IMAGE_STATE:-$PWD/target/images}
mkdir -p "$state"
printf '[containers]\ndefault_ulimits = []\n' >"$state/containers.conf"
export CONTAINERS_CONF="$state/containers.conf" STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
bah() { buildah --storage-driver=vfs "$@"; }

version=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' helm/Chart.yaml)
runtime=localhost/flotilla-runtime:bookworm
if ! bah inspect --type image "$runtime" >/dev/null 2>&1; then
  log "making the runtime base with mmdebstrap"
  # The mirror the host's apt uses (CI and developers alike).
  sources=/etc/apt/sources.list.d/debian.sources
  [ -f "$sources" ] || sources=/etc/apt/sources.list
  mmdebstrap --variant=essential --include=ca-certificates,libvulkan1 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --format=tar bookworm "$state/runtime.tar" "$sources" >&2
  container=$(bah from scratch)
  bah add "$container" "$state/runtime.tar" / >/dev/null
  bah commit --quiet "$container" "$runtime" >/dev/null
  bah rm "$container" >/dev/null
  rm -f "$state/runtime.tar"
fi

for name in controller agent; do
  log "building flotilla-$name:$version from target/$BINDIR"
  bah build --quiet --isolation=chroot --layers=false \
    --ignorefile containers/prebuilt.containerignore \
    --build-arg BINARIES=prebuilt --build-arg BINDIR="$BINDIR" \
    --build-arg BUILDER="$runtime" --build-arg RUNTIME="$runtime" \
    -f "containers/$name.Containerfile" -t "localhost/flotilla-$name:$version" . >/dev/null
done

$smoke || exit 0

log "smoke: the agent prints its version"
container=$(bah from "localhost/flotilla-agent:$version")
trap 'bah rm "$container" >/dev/null 2>&1 || true' EXIT
printed=$(bah run --isolation=chroot --user 65532:65532 "$container" -- /usr/local/bin/flotilla-agent --version)
grep -qF "$version" <<<"$printed" || { log "FAIL: the agent printed '$printed'"; exit 1; }
bah rm "$container" >/dev/null

log "smoke: the controller answers /readyz (SQLite and objects in its data directory)"
container=$(bah from "localhost/flotilla-controller:$version")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
grpc_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Chroot isolation shares the host's network, so loopback reaches it.
bah run --isolation=chroot --user 65532:65532 --workingdir /var/lib/flotilla "$container" -- \
  /usr/local/bin/flotilla-controller --data-dir /var/lib/flotilla \
  --http "127.0.0.1:$port" --grpc "127.0.0.1:$grpc_port" >"$state/controller.log" 2>&1 &
runner=$!
# `|| true` after wait: the runner ends by our kill (143), and under set -e
# that status would become the script's.
trap 'kill "$runner" 2>/dev/null; wait "$runner" 2>/dev/null || true; bah rm "$container" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 300); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    log "ok: flotilla-controller:$version and flotilla-agent:$version run"
    exit 0
  fi
  kill -0 "$runner" 2>/dev/null || break
  sleep 0.2
done
cat "$state/controller.log" >&2
log "FAIL: the controller in its image never answered /readyz"
exit 1
