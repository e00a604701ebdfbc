#!/usr/bin/env bash
# Manage the three-node minos cluster in Docker (docker-compose.yml).
#
#   scripts/docker-cluster.sh start|stop|status|image
#
# start   builds the static binary and the image, starts the containers and
#         waits until every node is healthy
# stop    removes the containers and their networks (and their data)
# status  containers and the cluster as node 1 sees it
# image   only builds the static binary and the image
#
# MINOS_DOCKER_PROJECT    compose project (default minos; containers are
#                         <project>_node<N>_1)
# MINOS_DOCKER_PORT_BASE  node N is published on 127.0.0.1:(base + N)
#                         (default 7200)
# MINOS_IMAGE             image tag (default minos:local)
# MINOS_RAFT_SUBNET, MINOS_CLIENT_SUBNET  first three octets of the two
#                         private networks (defaults 10.231.7 and 10.231.8)
# MINOS_STATIC_BIN        use this static binary instead of building one
# MINOS_DOCKER_DIR        where the credentials are written on first start
#                         (default .minos-docker): cluster.secret, tokens,
#                         admin.token, client.token; mounted at /secrets
#
# Then: MINOS_ADDR=127.0.0.1:7201 MINOS_TOKEN_FILE=.minos-docker/admin.token minos cluster status
#       target/debug/minos chaos --backend docker --docker-project minos
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="${MINOS_DOCKER_PROJECT:-minos}"
base="${MINOS_DOCKER_PORT_BASE:-7200}"
export MINOS_IMAGE="${MINOS_IMAGE:-minos:local}"
export MINOS_PORT_1=$((base + 1)) MINOS_PORT_2=$((base + 2)) MINOS_PORT_3=$((base + 3))
target="x86_64-unknown-linux-gnu"

die() { echo "docker-cluster.sh: $*" >&2; exit 2; }
dir="${MINOS_DOCKER_DIR:-$root/.minos-docker}"
nodes=3 label=node
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
export MINOS_SECRETS_DIR="$dir" MINOS_DOCKER_DIR="$dir"

# The containers run as uid 10001 and must read the credentials.
docker_credentials() {
  ensure_credentials
  if [[ "$(id -u)" == 0 ]]; then
    chown -R 10001:10001 "$dir"
  else
    echo "docker-cluster.sh: not root: making $dir readable by all (uid 10001 must read it)" >&2
    chmod 755 "$dir"; chmod 644 "$dir"/*
  fi
}

compose() { docker-compose -f "$root/docker-compose.yml" -p "$project" "$@"; }

build_image() {
  command -v docker >/dev/null || die "docker is not installed"
  docker info >/dev/null 2>&1 || die "the docker daemon does not answer (docker info)"
  local bin="${MINOS_STATIC_BIN:-}"
  if [[ -z "$bin" ]]; then
    echo "building a static minos binary (release, $target, crt-static)"
    (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --quiet --target "$target" --bin minos) || die "build failed"
    bin="$root/target/$target/release/minos"
  fi
  [[ -x "$bin" ]] || die "no binary at $bin"
  if ldd "$bin" 2>&1 | grep -q "=>"; then
    die "$bin is dynamically linked; a scratch image needs a static binary"
  fi
  local context
  context="$(mktemp -d)"
  mkdir -p "$context/rootfs/data"
  cp "$bin" "$context/rootfs/minos"
  docker build -q -f "$root/Dockerfile" -t "$MINOS_IMAGE" "$context" >/dev/null || {
    rm -rf "$context"; die "docker build failed"; }
  rm -rf "$context"
  echo "image $MINOS_IMAGE built FROM scratch"
}

health() {
  # One HTTP GET without curl: bash's /dev/tcp.
  local port="$1" answer
  exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || return 1
  printf 'GET /v1/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  answer="$(timeout 2 head -n 1 <&3 || true)"
  exec 3<&- 3>&-
  [[ "$answer" == *" 200 "* ]]
}

await_healthy() {
  local deadline=$((SECONDS + ${MINOS_START_TIMEOUT:-60})) n ok
  while (( SECONDS < deadline )); do
    ok=1
    for n in 1 2 3; do health $((base + n)) || ok=0; done
    if (( ok )); then return 0; fi
    sleep 0.2
  done
  compose logs --tail 20 >&2 || true
  die "the cluster did not become healthy in time"
}

case "${1:-}" in
  image)
    build_image
    ;;
  start)
    build_image
    docker_credentials
    compose up -d --no-build
    await_healthy
    for n in 1 2 3; do echo "node $n: 127.0.0.1:$((base + n)) (container ${project}_node${n}_1)"; done
    ;;
  stop)
    compose down -v -t 2
    ;;
  status)
    compose ps
    for n in 1 2 3; do
      if health $((base + n)); then echo "node $n: healthy"; else echo "node $n: not healthy"; fi
    done
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
