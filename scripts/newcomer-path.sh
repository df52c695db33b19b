#!/usr/bin/env bash
# The README's quick start as a test: takes the commands of the ```sh blocks
# of README.md from "## Quick start" up to "Run the inference engine on its
# own", runs them in order, as a newcomer would, and checks where they end:
# after the rollout to 1.1.0, a chat to the agent under the assigned alias
# `support-bot` is answered by version 1.1.0, and box-1 still has the
# `support` prompt and the alias. The commands are read from the README on
# every run, so the README and this test cannot drift apart.
#
# Usage: BINDIR=release bash scripts/newcomer-path.sh [--list]
# (--list prints the commands as read from the README, and runs nothing).
#
# Binaries come from target/$BINDIR (default release, as the README builds).
# CI runs it with BINDIR=debug, on the binaries its test build already
# made: a release build of the workspace would push CI past its time budget.
# The model comes from models/ (scripts/test.sh fetches it).
#
# How the README's text becomes commands:
# - backslash-continued lines are joined, quotes may span lines, and a
#   `# comment` outside quotes is dropped;
# - `cargo run --release --bin NAME [--]` becomes target/$BINDIR/NAME, and
#   `cargo build` lines are skipped (the binaries are built already); any
#   other `cargo` command fails the test;
# - a command ending in `&` (the agent) and the controller (which the README
#   runs in a terminal of its own) run in the background, logging to files;
# - a command whose comment says `newcomer-path: skip` is not run (the
#   README marks lines that are not one literal command that way), and a
#   `grpcurl` command is skipped, with a note, when grpcurl is not installed.
# Where a human would wait, the test waits on a condition with a deadline:
# for the controller to be ready, for the agent to enrol, after `assign`
# until box-1 serves its assignment, and for `rollout status --watch` to
# return (and then checks the rollout succeeded). Every foreground command
# runs under the same deadline (NEWCOMER_DEADLINE seconds, default 180).
#
# It runs in a fresh temporary directory holding links to the repository's
# scripts/ and models/ (the README's paths are relative), on the README's
# fixed ports, which must be free; whatever it started is stopped on exit.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
BINDIR=${BINDIR:-release}
BIN=$repo/target/$BINDIR
DEADLINE=${NEWCOMER_DEADLINE:-180}
NODE=box-1
ALIAS=support-bot
PROMPT=support@1
NEW_VERSION=1.1.0
SKIP_MARKER='newcomer-path: skip'

log() { echo "newcomer-path: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

# ---- extract the commands --------------------------------------------------

commands=() # one entry per command, newlines kept where a quote spans lines
skipped=()  # 1 where the command's comment carries the skip marker
in_section=false in_block=false
cmd='' quote='' skip=0
while IFS= read -r line || [ -n "$line" ]; do
  if ! $in_section; then
    [[ $line == "## Quick start"* ]] && in_section=true
    continue
  fi
  [[ $line == "Run the inference engine on its own"* ]] && break
  if ! $in_block; then
    [[ $line == '```sh' ]] && in_block=true
    continue
  fi
  if [[ $line == '```' ]]; then
    [ -z "$cmd$quote" ] || fail "README.md: a sh block ends inside a command: $cmd"
    in_block=false
    continue
  fi
  # A continuation line (not one inside quotes) loses its indentation.
  if [ -n "$cmd" ] && [ -z "$quote" ]; then
    line=${line#"${line%%[![:space:]]*}"}
  fi
  continued=false
  for ((i = 0; i < ${#line}; i++)); do
    c=${line:i:1}
    if [ "$quote" = "'" ]; then
      cmd+=$c
      [ "$c" = "'" ] && quote=''
    elif [ "$quote" = '"' ]; then
      cmd+=$c
      if [ "$c" = "\\" ]; then
        i=$((i + 1)); cmd+=${line:i:1}
      elif [ "$c" = '"' ]; then
        quote=''
      fi
    elif [ "$c" = "\\" ]; then
      if ((i == ${#line} - 1)); then
        continued=true
      else
        cmd+=$c; i=$((i + 1)); cmd+=${line:i:1}
      fi
    elif [ "$c" = "'" ] || [ "$c" = '"' ]; then
      quote=$c; cmd+=$c
    elif [ "$c" = '#' ] && { ((i == 0)) || [[ ${line:i-1:1} == [[:space:]] ]]; }; then
      [[ ${line:i} == *"$SKIP_MARKER"* ]] && skip=1
      break
    else
      cmd+=$c
    fi
  done
  if [ -n "$quote" ]; then
    cmd+=$'\n'
  elif $continued; then
    cmd="${cmd%"${cmd##*[![:space:]]}"} "
  else
    cmd=${cmd%"${cmd##*[![:space:]]}"}
    if [ -n "$cmd" ]; then
      commands+=("$cmd")
      skipped+=("$skip")
    fi
    cmd='' skip=0
  fi
done <"$repo/README.md"
$in_section || fail "README.md has no \"## Quick start\" section"
[ -z "$cmd$quote" ] || fail "README.md: the quick start ends inside a command: $cmd"
[ ${#commands[@]} -gt 0 ] || fail "no commands found in README.md's quick start"
log "${#commands[@]} commands in README.md's quick start"
if [ "${1:-}" = --list ]; then
  for index in "${!commands[@]}"; do
    printf '%s%s\n' "${commands[index]}" "$([ "${skipped[index]}" = 1 ] && echo "   [$SKIP_MARKER]")"
  done
  exit 0
fi

for binary in flotilla flotilla-controller flotilla-agent; do
  [ -x "$BIN/$binary" ] || fail "$BIN/$binary is missing: build the binaries first (cargo build --workspace --bins$([ "$BINDIR" = release ] && echo ' --release'))"
done
for tool in curl python3 timeout; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is needed"
done
for port in 8080 50051 11434 50052; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port on 127.0.0.1 is in use; the README's commands need it free"
  fi
done

# ---- the sandbox, and cleaning up --------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/newcomer-path.XXXXXX")
mkdir -p "$repo/models" "$work/logs"
ln -s "$repo/scripts" "$work/scripts"
ln -s "$repo/models" "$work/models"
declare -A background=() # pid -> log file

stop_all() {
  local pid deadline
  for pid in "${!background[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # The agent lets running requests finish for up to 30 s.
  deadline=$((SECONDS + 40))
  for pid in "${!background[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
on_exit() {
  local rc=$? pid
  if [ "$rc" -ne 0 ]; then
    for pid in "${!background[@]}"; do
      echo "---- last lines of ${background[$pid]#"$work/"} ----" >&2
      tail -n 60 "${background[$pid]}" >&2 || true
    done
  fi
  stop_all
  rm -rf "$work"
  if [ "$rc" -eq 0 ]; then log "passed in ${SECONDS}s"; else log "failed after ${SECONDS}s"; fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM
cd "$work"

# ---- waiting on conditions ---------------------------------------------------

# wait_for WHAT COMMAND...: polls COMMAND until it succeeds, for at most
# $DEADLINE seconds, failing early when a background process has died.
wait_for() {
  local what=$1 pid
  shift
  local deadline=$((SECONDS + DEADLINE))
  log "waiting until $what"
  until "$@"; do
    for pid in "${!background[@]}"; do
      kill -0 "$pid" 2>/dev/null || fail "${background[$pid]#"$work/"}'s process exited while waiting until $what"
    done
    ((SECONDS < deadline)) || fail "not within ${DEADLINE}s: $what"
    sleep 1
  done
}

controller_ready() {
  [ -s flotilla-data/admin.token ] && curl -sf -o /dev/null http://127.0.0.1:8080/readyz
}
node_enrolled() {
  "$BIN/flotilla" --token "$(cat flotilla-data/admin.token)" node show "$NODE" >/dev/null 2>&1
}
# node_serves [VERSION]: the node is ready, its agent reached the desired
# generation and serves it (at VERSION when given).
node_serves() {
  "$BIN/flotilla" --token "$(cat flotilla-data/admin.token)" node show "$NODE" --output json 2>/dev/null |
    python3 -c '
import json, sys
node = json.load(sys.stdin)
observed, assignment = node.get("observed") or {}, node.get("assignment") or {}
want = sys.argv[1]
sys.exit(0 if node["ready"] and assignment
         and observed.get("generation") == node["desired_generation"]
         and observed.get("phase") == "ready"
         and observed.get("serving_digest") == assignment.get("digest")
         and (not want or assignment.get("version") == want) else 1)' "${1:-}"
}

# ---- run them ----------------------------------------------------------------

binary_of() { # the first target/$BINDIR binary a command runs, or nothing
  [[ $1 =~ \"\$BIN/([A-Za-z0-9_-]+)\" ]] && echo "${BASH_REMATCH[1]}"
}

set -a # the README's assignments (TOKEN=...) reach every command, as in one shell
for index in "${!commands[@]}"; do
  readme=${commands[index]}
  if [ "${skipped[index]}" = 1 ]; then
    log "skipping (marked '$SKIP_MARKER' in README.md): $readme"
    continue
  fi
  if [[ $readme == "cargo build "* ]]; then
    log "skipping (binaries are prebuilt in target/$BINDIR): $readme"
    continue
  fi
  if [[ $readme == "grpcurl "* ]] && ! command -v grpcurl >/dev/null 2>&1; then
    log "skipping (grpcurl is not installed): $readme"
    continue
  fi

  # `cargo run --release --bin NAME [--]` -> "$BIN/NAME".
  cmd=$readme
  while [[ $cmd =~ cargo\ run\ --release\ --bin\ ([A-Za-z0-9_-]+)(\ --)?(\ |$) ]]; do
    cmd=${cmd/"${BASH_REMATCH[0]}"/"\"\$BIN/${BASH_REMATCH[1]}\"${BASH_REMATCH[3]}"}
  done
  [[ $cmd =~ (^|[^[:alnum:]_-])cargo\  ]] && fail "README.md: no rule maps this cargo command to a binary: $readme"

  run_in_background=false
  if [[ $cmd =~ [^\&]\&[[:space:]]*$ ]]; then
    cmd=${cmd%&*}
    cmd=${cmd%"${cmd##*[![:space:]]}"}
    run_in_background=true
  fi
  program=$(binary_of "$cmd" || true)
  [ "$program" = flotilla-controller ] && run_in_background=true

  echo "+ $cmd"
  if $run_in_background; then
    out="$work/logs/${program:-background-$index}.log"
    # exec: the recorded pid is the program's own, so stopping it stops it.
    eval "exec $cmd" </dev/null >"$out" 2>&1 &
    background[$!]=$out
  else
    # Under the deadline: each binary is run by timeout; so is a command
    # that is not an assignment (curl, bash ...).
    cmd=${cmd//"\"\$BIN/"/"timeout \"\$DEADLINE\" \"\$BIN/"}
    if ! [[ $cmd =~ ^(export\ |[A-Za-z_][A-Za-z0-9_]*=|timeout\ ) ]]; then
      cmd="timeout \"\$DEADLINE\" $cmd"
    fi
    eval "$cmd" || fail "exit status $? from: $readme"
  fi

  # Where a human would wait before the next step.
  case $program:$cmd in
    flotilla-controller:*) wait_for "the controller is ready and wrote its admin token" controller_ready ;;
    flotilla-agent:*) wait_for "$NODE has enrolled" node_enrolled ;;
    flotilla:*" assign "*) wait_for "$NODE serves its assignment" node_serves ;;
    flotilla:*" rollout status "*--watch*)
      # --watch returned (under the deadline): the rollout must have ended well.
      name=$(sed -E 's/.* rollout status ([^ ]+).*/\1/' <<<"$cmd")
      state=$("$BIN/flotilla" rollout status "$name" --output json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])')
      [ "$state" = succeeded ] || fail "rollout $name ended $state, not succeeded"
      log "rollout $name succeeded"
      ;;
  esac
done
set +a

# ---- where the README leaves a newcomer --------------------------------------

[ -n "${FLOTILLA_TOKEN:-}" ] || fail "the README's commands did not set FLOTILLA_TOKEN"
wait_for "$NODE serves $NEW_VERSION" node_serves "$NEW_VERSION"

echo "+ $BIN/flotilla node show $NODE --output json"
"$BIN/flotilla" node show "$NODE" --output json >"$work/node.json"
python3 - "$work/node.json" "$PROMPT" "$ALIAS" "$NEW_VERSION" <<'PY' || fail "$NODE's assignment after the rollout is not the README's"
import json, sys
path, prompt, alias, version = sys.argv[1:]
assignment = json.load(open(path))["assignment"] or {}
print(f"assignment: {assignment.get('model')} {assignment.get('version')}, prompt {assignment.get('prompt')}"
      f" ({assignment.get('prompt_policy')}), aliases {assignment.get('aliases')}")
problems = []
if assignment.get("version") != version:
    problems.append(f"version {assignment.get('version')}, expected {version}")
if assignment.get("prompt") != prompt:
    problems.append(f"prompt {assignment.get('prompt')}, expected {prompt}")
if alias not in (assignment.get("aliases") or []):
    problems.append(f"aliases {assignment.get('aliases')} lack {alias}")
for problem in problems:
    print(f"newcomer-path: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

echo "+ curl localhost:11434/v1/chat/completions (model $ALIAS)"
status=$(timeout "$DEADLINE" curl -s -o "$work/chat.json" -D "$work/chat.headers" -w '%{http_code}' \
  localhost:11434/v1/chat/completions -H 'Content-Type: application/json' \
  -d "{\"model\": \"$ALIAS\", \"max_tokens\": 32,
       \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of Germany?\"}]}") ||
  fail "the chat to $ALIAS did not complete"
cat "$work/chat.json"; echo
[ "$status" = 200 ] || fail "the chat to $ALIAS answered HTTP $status"
served=$(tr -d '\r' <"$work/chat.headers" | sed -n 's/^x-flotilla-model-version: *//Ip')
[ "$served" = "$NEW_VERSION" ] || fail "the chat to $ALIAS was answered by version '${served}', expected $NEW_VERSION"
log "the chat to $ALIAS was answered by $NEW_VERSION with prompt $PROMPT"
