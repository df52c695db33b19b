#!/usr/bin/env bash
# Prints the path of `promtool` (Prometheus's metric linter), installing
# Debian's `prometheus` package when it is missing. tests/tests/metrics.rs
# pipes both processes' /metrics through `promtool check metrics`.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  echo "ensure-promtool: installing Debian's prometheus package (for promtool)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # The package's post-install starts no daemon without systemd; only the
  # binary is used.
  apt-get install -y -qq --no-install-recommends prometheus >&2
fi
command -v promtool
