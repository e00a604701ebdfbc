#!/usr/bin/env bash
# Run three Minotaur game servers (examples/minotaur) on loopback, each
# embedding one minos node.
#
#   scripts/minotaur-cluster.sh start|stop|status|kill N|term N|restart N
#
# MINOTAUR_GAME_PORT_BASE   server N's game routes on 127.0.0.1:(base + N)  (default 7400; 7200 is docker-cluster.sh's)
# MINOTAUR_MINOS_PORT_BASE  server N's minos node on 127.0.0.1:(base + N)   (default 7300)
# MINOTAUR_CLUSTER_DIR      data, logs and pid files        (default target/minotaur-cluster)
# MINOTAUR_ROUND_SECONDS    length of a game round          (default 86400)
# MINOTAUR_BIN              the server binary (default: target/release/examples/minotaur,
#                           built with `cargo build --release --example minotaur`)
# MINOTAUR_START_TIMEOUT    seconds to wait for health      (default 60)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
game_base="${MINOTAUR_GAME_PORT_BASE:-7400}"
minos_base="${MINOTAUR_MINOS_PORT_BASE:-7300}"
dir="${MINOTAUR_CLUSTER_DIR:-${CARGO_TARGET_DIR:-$root/target}/minotaur-cluster}"
round_seconds="${MINOTAUR_ROUND_SECONDS:-86400}"
bin="${MINOTAUR_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/examples/minotaur}"
start_timeout="${MINOTAUR_START_TIMEOUT:-60}"
nodes=3

die() { echo "minotaur-cluster.sh: $*" >&2; exit 2; }
label=server
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

game_addr() { echo "127.0.0.1:$((game_base + $1))"; }
minos_addr() { echo "127.0.0.1:$((minos_base + $1))"; }

peers() {
  local list="" n
  for n in $(seq 1 "$nodes"); do list="${list:+$list,}$n=$(minos_addr "$n")"; done
  echo "$list"
}

build() {
  if [[ -z "${MINOTAUR_BIN:-}" ]]; then
    (cd "$root" && cargo build --release --quiet --example minotaur) || die "build failed"
  fi
  [[ -x "$bin" ]] || die "no server binary at $bin"
}

start_node() {
  local n="$1"
  if pid_of "$n" >/dev/null; then echo "server $n already running"; return; fi
  mkdir -p "$dir/node$n"
  nohup "$bin" --id "$n" --listen "$(game_addr "$n")" --minos-listen "$(minos_addr "$n")" \
    --data-dir "$dir/node$n" --peers "$(peers)" --round-seconds "$round_seconds" \
    --cluster-secret-file "$dir/cluster.secret" --token-file "$dir/tokens" \
    >>"$dir/node$n.log" 2>&1 &
  echo $! >"$dir/node$n.pid"
}

# Waits until server N's /health answers 200 (its minos node knows a leader
# and has caught up), or fails fast if the process exited.
await_healthy() {
  local n="$1" deadline=$((SECONDS + start_timeout))
  while (( SECONDS < deadline )); do
    curl -fsS "http://$(game_addr "$n")/health" >/dev/null 2>&1 && return 0
    pid_of "$n" >/dev/null || die "server $n exited (log: $dir/node$n.log)"
    sleep 0.05
  done
  die "server $n not healthy within ${start_timeout}s (log: $dir/node$n.log)"
}

status() {
  local n pid
  for n in $(seq 1 "$nodes"); do
    if pid="$(pid_of "$n")"; then
      echo "server $n  game http://$(game_addr "$n")  minos $(minos_addr "$n")  running (pid $pid)"
    else
      echo "server $n  game http://$(game_addr "$n")  minos $(minos_addr "$n")  stopped"
    fi
  done
}

cmd="${1:-}"; shift || true
case "$cmd" in
  start)
    build
    ensure_credentials
    for n in $(seq 1 "$nodes"); do start_node "$n"; done
    for n in $(seq 1 "$nodes"); do await_healthy "$n"; done
    status
    echo "try: curl -s -XPOST http://$(game_addr 1)/games -H 'content-type: application/json' -d '{\"id\":\"labyrinth\"}'"
    ;;
  stop)
    for n in $(seq 1 "$nodes"); do stop_node "$n" & done
    wait
    echo "servers stopped"
    ;;
  status) status ;;
  kill|term)
    n="${1:-}"; check_node "$n"
    pid="$(pid_of "$n")" || die "server $n is not running"
    if [[ "$cmd" == kill ]]; then
      kill -KILL "$pid"
      rm -f "$dir/node$n.pid"
    else
      stop_node "$n"
    fi
    echo "server $n: sent SIG${cmd^^}"
    ;;
  restart)
    n="${1:-}"; check_node "$n"; build; ensure_credentials
    stop_node "$n"; start_node "$n"; await_healthy "$n"
    echo "server $n: restarted (game http://$(game_addr "$n"), minos $(minos_addr "$n"))"
    ;;
  *) die "usage: scripts/minotaur-cluster.sh start|stop|status|kill N|term N|restart N" ;;
esac
