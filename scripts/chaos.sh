#!/usr/bin/env bash
# Run a chaos run: a seeded fault schedule against a cluster, every request
# recorded, and the history checked (no lost acknowledged write, no append
# applied twice, reads never go backwards, never two owners).
#
#   scripts/chaos.sh process|docker|inprocess [minos chaos flags...]
#
# e.g. scripts/chaos.sh process --duration-s 300 --seed 7
#      scripts/chaos.sh docker --duration-s 120   (starts the Docker cluster
#                                                 if it is not running)
# The run prints its seed first; rerun with --seed to replay the schedule.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
backend="${1:-}"
[[ -n "$backend" ]] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift

(cd "$root" && cargo build --release --quiet --bin minos)
# A private copy, so a concurrent rebuild cannot replace it mid-run.
bin="$(mktemp -d)/minos"
cp "$root/target/release/minos" "$bin"

if [[ "$backend" == docker ]]; then
  # Where scripts/docker-cluster.sh keeps the credentials (the chaos
  # clients send its admin.token).
  export MINOS_DOCKER_DIR="${MINOS_DOCKER_DIR:-$root/.minos-docker}"
  project="${MINOS_DOCKER_PROJECT:-minos}"
  if ! docker inspect "${project}_node1_1" >/dev/null 2>&1; then
    "$root/scripts/docker-cluster.sh" start
  fi
  exec "$bin" chaos --backend docker --docker-project "$project" "$@"
fi
exec "$bin" chaos --backend "$backend" --bin "$bin" "$@"
