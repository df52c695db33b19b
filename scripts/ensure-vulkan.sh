#!/usr/bin/env bash
# Makes sure wgpu finds a Vulkan adapter for the GPU tests (engine/tests/gpu.rs,
# tests/tests/gpu.rs): where `vulkaninfo` lists none, installs Debian's Mesa
# Vulkan drivers, whose lavapipe (llvmpipe) runs Vulkan on the CPU. A machine
# with a real GPU and its driver keeps its own. Prints the adapters found.
set -euo pipefail
log() { echo "ensure-vulkan: $*" >&2; }
has_adapter() {
  command -v vulkaninfo >/dev/null 2>&1 \
    && vulkaninfo --summary 2>/dev/null | grep -q 'deviceName'
}
if ! has_adapter; then
  log "no Vulkan adapter; installing Mesa's Vulkan drivers (lavapipe) and the loader"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 vulkan-tools >&2
fi
if ! has_adapter; then
  log "still no Vulkan adapter after installing Mesa's drivers"
  exit 1
fi
vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName' | sed 's/^[[:space:]]*//' >&2
