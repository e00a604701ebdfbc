# Shared by scripts/cluster.sh and scripts/minotaur-cluster.sh (sourced).
# The sourcing script sets: dir (data, logs, pid files), nodes (count),
# label ("node" or "server", for messages) and die().

# True while process PID runs. A zombie (exited, not yet reaped by its
# parent: nohup'd nodes are reparented to PID 1, which may reap late) has
# stopped: kill -0 alone would call it running.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state="$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null)"
  [[ "$state" != Z ]]
}

# pid of node N if its process runs.
pid_of() {
  local file="$dir/node$1.pid"
  [[ -f "$file" ]] || return 1
  local pid; pid="$(cat "$file")"
  alive "$pid" || return 1
  echo "$pid"
}

check_node() {
  [[ "$1" =~ ^[0-9]+$ ]] && (( $1 >= 1 && $1 <= nodes )) || die "no $label '$1' (${label}s are 1..$nodes)"
}

# Sends SIGTERM (graceful: the node hands its sessions over) and waits for
# the process to exit, SIGKILL after 15 s.
stop_node() {
  local n="$1" pid
  pid="$(pid_of "$n")" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while alive "$pid" && (( SECONDS < deadline )); do sleep 0.05; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  rm -f "$dir/node$n.pid"
}

# A 64-hex-digit secret from the kernel's random source.
random_secret() {
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

# Credentials on first start, mode 0600, kept across restarts:
#   $dir/cluster.secret  the secret every peer request carries
#   $dir/tokens          the API tokens the nodes accept (ROLE TOKEN lines)
#   $dir/admin.token     the admin token the CLI reads by default
#   $dir/client.token    a token with the client role
ensure_credentials() {
  mkdir -p "$dir"
  chmod 700 "$dir"
  (
    umask 077
    [[ -s "$dir/cluster.secret" ]] || random_secret >"$dir/cluster.secret"
    [[ -s "$dir/admin.token" ]] || random_secret >"$dir/admin.token"
    [[ -s "$dir/client.token" ]] || random_secret >"$dir/client.token"
    printf 'admin %s\nclient %s\n' "$(cat "$dir/admin.token")" "$(cat "$dir/client.token")" >"$dir/tokens"
  )
}
