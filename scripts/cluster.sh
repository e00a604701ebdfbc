#!/usr/bin/env bash
# Manage a local three-node minos cluster.
#
#   scripts/cluster.sh start|stop [--now]|status|kill N|term N|restart N|rolling-restart
#
# stop             stops the nodes one after another (the leader last), each
#                  handing its sessions over to the nodes still running
# stop --now       stops all nodes at once, without handoff (their sessions
#                  stay where they are and resume at the next start)
# rolling-restart  restarts every node in turn (the leader last) without a
#                  failed call: drain it, stop it (SIGTERM), start it, wait
#                  until it is healthy and Up, then `minos cluster rebalance`
#                  moves its sessions back (see docs/kubernetes.md)
#
# MINOS_PORT_BASE   node N listens on 127.0.0.1:(base + N)   (default 7100)
# MINOS_CLUSTER_DIR data, logs and pid files                  (default .minos-cluster)
# MINOS_BIN         the minos binary (default: target/release/minos, built if missing)
# MINOS_NODES       number of nodes (default 3)
# Extra `minos serve` flags can be given in MINOS_SERVE_FLAGS; `{node}` in them
# becomes each node's id.
#
# The first start writes credentials into MINOS_CLUSTER_DIR (mode 0600):
# cluster.secret (peers), tokens (what the nodes accept), admin.token (what
# the CLI sends by default) and client.token.
set -euo pipefail
# Data, logs, pid files and credentials are this user's alone.
umask 077

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${MINOS_PORT_BASE:-7100}"
dir="${MINOS_CLUSTER_DIR:-$root/.minos-cluster}"
nodes="${MINOS_NODES:-3}"
bin="${MINOS_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/minos}"

die() { echo "cluster.sh: $*" >&2; exit 2; }
label=node
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
# The CLI finds the admin token here.
export MINOS_CLUSTER_DIR="$dir"

addr_of() { echo "127.0.0.1:$((base + $1))"; }

peers() {
  local list="" n
  for n in $(seq 1 "$nodes"); do list="${list:+$list,}$n=$(addr_of "$n")"; done
  echo "$list"
}

ensure_binary() {
  if [[ -z "${MINOS_BIN:-}" ]]; then
    echo "building minos (cargo build --release; the first build takes a few minutes)"
    (cd "$root" && cargo build --release --bin minos) || die "build failed"
  fi
  [[ -x "$bin" ]] || die "no minos binary at $bin"
}

start_node() {
  local n="$1"
  if pid_of "$n" >/dev/null; then echo "node $n already running"; return; fi
  mkdir -p "$dir/node$n"
  # {node} in MINOS_SERVE_FLAGS is this node's id (each node its own app:
  # --external-kind game=http://127.0.0.1:1780{node}/minos).
  local flags="${MINOS_SERVE_FLAGS:-}"
  flags="${flags//\{node\}/$n}"
  # shellcheck disable=SC2086
  nohup "$bin" serve --id "$n" --listen "$(addr_of "$n")" --data-dir "$dir/node$n" \
    --peers "$(peers)" --cluster-secret-file "$dir/cluster.secret" --token-file "$dir/tokens" \
    $flags >>"$dir/node$n.log" 2>&1 &
  echo $! >"$dir/node$n.pid"
}

await_leader() {
  local deadline=$((SECONDS + ${MINOS_START_TIMEOUT:-30})) n
  while (( SECONDS < deadline )); do
    for n in $(seq 1 "$nodes"); do
      if pid_of "$n" >/dev/null && MINOS_ADDR="$(addr_of "$n")" "$bin" cluster status --json 2>/dev/null \
          | grep -q '"leader": [0-9]'; then
        return 0
      fi
    done
    sleep 0.1
  done
  die "no leader elected within ${MINOS_START_TIMEOUT:-30}s (logs: $dir/node*.log)"
}

await_healthy() {
  local n="$1" deadline=$((SECONDS + ${MINOS_START_TIMEOUT:-30}))
  while (( SECONDS < deadline )); do
    curl -fsS "http://$(addr_of "$n")/v1/health" >/dev/null 2>&1 && return 0
    pid_of "$n" >/dev/null || die "node $n exited (log: $dir/node$n.log)"
    sleep 0.05
  done
  die "node $n not healthy within ${MINOS_START_TIMEOUT:-30}s (log: $dir/node$n.log)"
}

# The CLI against node N.
cli_on() {
  local n="$1"; shift
  MINOS_ADDR="$(addr_of "$n")" "$bin" "$@"
}

first_running() {
  local n
  for n in $(seq 1 "$nodes"); do pid_of "$n" >/dev/null && { echo "$n"; return 0; }; done
  return 1
}

# The leader's id as a running node knows it (empty if none).
leader_id() {
  local n; n="$(first_running)" || return 0
  cli_on "$n" cluster status 2>/dev/null | sed -n 's/^leader: \([0-9][0-9]*\).*/\1/p'
}

# Node ids with the leader last (fewer elections while nodes go one by one).
leader_last() {
  local leader n; leader="$(leader_id)"
  for n in $(seq 1 "$nodes"); do [[ "$n" == "$leader" ]] || echo "$n"; done
  [[ -n "$leader" ]] && echo "$leader"
  return 0
}

# Waits until the running nodes agree that node N is Up (it renewed its
# lease after its restart), so a rebalance counts it.
await_up() {
  local n="$1" deadline=$((SECONDS + ${MINOS_START_TIMEOUT:-30}))
  while (( SECONDS < deadline )); do
    [[ "$(cli_on "$n" cluster status 2>/dev/null | awk -v n="$n" '$1 == n { print $3 }')" == up ]] && return 0
    sleep 0.05
  done
  die "node $n not Up within ${MINOS_START_TIMEOUT:-30}s (log: $dir/node$n.log)"
}

rolling_restart() {
  local n
  for n in $(leader_last); do
    pid_of "$n" >/dev/null || die "node $n is not running (start the cluster first)"
  done
  for n in $(leader_last); do
    echo "node $n: draining"
    cli_on "$n" node drain "$n" >/dev/null || die "node $n: drain failed"
    echo "node $n: stopping"
    stop_node "$n"
    echo "node $n: starting"
    start_node "$n"
    await_healthy "$n"
    await_up "$n"
    echo "node $n: healthy and up; rebalancing"
    cli_on "$n" cluster rebalance >/dev/null || die "rebalance after node $n failed"
  done
  echo "rolling restart done"
}

status() {
  local n
  for n in $(seq 1 "$nodes"); do
    if pid="$(pid_of "$n")"; then
      echo "node $n  $(addr_of "$n")  running (pid $pid)"
    else
      echo "node $n  $(addr_of "$n")  stopped"
    fi
  done
  local first; for first in $(seq 1 "$nodes"); do pid_of "$first" >/dev/null && break; done
  MINOS_ADDR="$(addr_of "$first")" "$bin" cluster status 2>/dev/null || true
}

cmd="${1:-}"; shift || true
case "$cmd" in
  start)
    ensure_binary
    ensure_credentials
    for n in $(seq 1 "$nodes"); do start_node "$n"; done
    await_leader
    for n in $(seq 1 "$nodes"); do await_healthy "$n"; done
    for n in $(seq 1 "$nodes"); do echo "node $n: $(addr_of "$n")"; done
    echo "cluster is up"
    echo "credentials: $dir/admin.token (the CLI reads it), $dir/client.token, $dir/cluster.secret"
    echo "to use the CLI:"
    echo "  export PATH=\"$(dirname "$bin"):\$PATH\" MINOS_ADDR=$(addr_of 1) MINOS_CLUSTER_DIR=\"$dir\""
    echo "  minos cluster status"
    ;;
  stop)
    case "${1:-}" in
      --now)
        echo "stopping all nodes at once (no handoff: sessions resume where they were at the next start)"
        for n in $(seq 1 "$nodes"); do stop_node "$n" & done
        wait
        ;;
      "")
        echo "stopping nodes one after another, the leader last (each hands its sessions over; stop --now: all at once)"
        if [[ -x "$bin" ]]; then order="$(leader_last)"; else order="$(seq 1 "$nodes")"; fi
        for n in $order; do
          pid_of "$n" >/dev/null || continue
          stop_node "$n"
          echo "node $n: stopped"
        done
        ;;
      *) die "usage: scripts/cluster.sh stop [--now]" ;;
    esac
    echo "cluster stopped"
    ;;
  rolling-restart) ensure_binary; ensure_credentials; rolling_restart ;;
  status) [[ -x "$bin" ]] || die "not built yet"; status ;;
  kill|term)
    n="${1:-}"; check_node "$n"
    pid="$(pid_of "$n")" || die "node $n is not running"
    if [[ "$cmd" == kill ]]; then kill -KILL "$pid"; else kill -TERM "$pid"; fi
    if [[ "$cmd" == term ]]; then
      deadline=$((SECONDS + 15))
      while alive "$pid" && (( SECONDS < deadline )); do sleep 0.05; done
    fi
    rm -f "$dir/node$n.pid"
    echo "node $n: sent SIG${cmd^^}"
    ;;
  restart)
    n="${1:-}"; check_node "$n"; ensure_binary; ensure_credentials
    stop_node "$n"; start_node "$n"; await_healthy "$n"
    echo "node $n: restarted at $(addr_of "$n")"
    ;;
  *) die "usage: scripts/cluster.sh start|stop [--now]|status|kill N|term N|restart N|rolling-restart" ;;
esac
