#!/usr/bin/env bash
# The etcd baseline for `minos bench failover`: the usual etcd ownership
# pattern, measured with the same kill-to-first-answer definition.
#
# A 3-member etcd cluster runs on loopback ports chosen by the OS, in a
# temporary directory. Three worker processes (one per member, as if
# co-located with it) each hold a lease with keep-alive (every TTL/3, as
# etcd's Go client does) and own session keys /sessions/<id> written under
# that lease, value = the owner's name. Every worker watches /sessions/; when
# a key is deleted (its owner's lease expired or was revoked) the survivors
# race to take it with a transaction (create_revision == 0 -> put with their
# own lease). Per trial one worker is signalled, and the sessions it owned are
# polled through a surviving member every 5 ms (one range read covers all of
# them) until each names a new owner: that delay is the sample, from the
# signal to the first read that shows the new owner.
#
# Modes: crash (SIGKILL of a worker), graceful (SIGTERM: the worker revokes
# its lease, then exits), freeze (SIGSTOP: only the TTL can tell),
# leader-crash (SIGKILL of the etcd leader and of the worker next to it, as
# when the machine hosting both dies).
#
# The measuring client is Python 3 with only the standard library: it talks
# to etcd's v3 JSON gateway (grpc-gateway) over HTTP.
#
# Usage: scripts/bench-etcd-baseline.sh [--sessions N] [--trials T]
#          [--mode crash|graceful|freeze|leader-crash]... [--ttl SECONDS]
#          [--cap-ms MS] [--poll-ms MS] [--heartbeat-ms MS]
#          [--election-timeout-ms MS] [--json FILE] [--keep DIR]
# Defaults: 100 sessions, 20 trials, all modes, TTL 1 s, etcd heartbeat 50 ms
# and election timeout 300 ms (minos's own Raft timing; it also lets etcd
# grant a 1 s TTL: its minimum TTL is 1.5 election timeouts, rounded up to a
# whole second).
# Exit codes: 0 done, 1 a session was lost or the run failed, 2 bad usage.
set -euo pipefail

if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing etcd from Debian packages (etcd-server, etcd-client)" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >&2
    else
        echo "etcd is missing: install the Debian packages etcd-server and etcd-client" >&2
        exit 2
    fi
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 is needed for the measuring client" >&2
    exit 2
fi

work="$(mktemp -d -t etcd-baseline-XXXXXX)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

cat >"$work/baseline.py" <<'PY'
import argparse
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import datetime

PREFIX = "/sessions/"
PREFIX_END = "/sessions0"  # the prefix with its last byte + 1


def b64(text):
    return base64.b64encode(text.encode()).decode()


def unb64(text):
    return base64.b64decode(text).decode()


class Gateway:
    """A persistent HTTP connection to one member's v3 JSON gateway."""

    def __init__(self, endpoint, timeout=2.0):
        host, port = endpoint.rsplit(":", 1)
        self.host, self.port, self.timeout = host, int(port), timeout
        self.conn = None

    def post(self, path, body):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.conn.request("POST", path, body=json.dumps(body),
                                  headers={"Content-Type": "application/json"})
                response = self.conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status}: {data[:200]!r}")
                return json.loads(data or b"{}")
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# ---------------------------------------------------------------- worker

def worker(args):
    """Owns keys under its lease; takes deleted keys with a transaction."""
    gateway = Gateway(args.endpoint)
    takes = open(args.takes, "a", buffering=1)
    state = {"lease": None}
    lock = threading.Lock()

    def register():
        grant = gateway.post("/v3/lease/grant", {"TTL": args.ttl})
        lease = grant["ID"]
        gateway.post("/v3/kv/put", {"key": b64("/workers/" + args.name),
                                    "value": b64(json.dumps({"lease": lease, "ttl": grant.get("TTL")})),
                                    "lease": lease})
        with lock:
            state["lease"] = lease

    def on_term(_signum, _frame):
        # Graceful stop: revoking the lease deletes the keys at once.
        try:
            Gateway(args.endpoint).post("/v3/lease/revoke", {"ID": state["lease"]})
        finally:
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)

    def keepalive():
        gw = Gateway(args.endpoint)
        while True:
            time.sleep(args.ttl / 3.0)
            try:
                answer = gw.post("/v3/lease/keepalive", {"ID": state["lease"]})
                if int(answer.get("result", {}).get("TTL", "0")) <= 0:
                    register()  # the lease expired: our keys are gone; start over
            except Exception:
                pass  # no leader right now; try again at the next tick

    def take(key):
        with lock:
            lease = state["lease"]
        compare = [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}]
        success = [{"request_put": {"key": b64(key), "value": b64(args.name), "lease": lease}}]
        try:
            answer = Gateway(args.endpoint).post("/v3/kv/txn", {"compare": compare, "success": success})
        except Exception:
            return
        if answer.get("succeeded"):
            revision = answer.get("header", {}).get("revision", "?")
            takes.write(f"{time.time():.6f} {args.name} {key} {revision}\n")

    register()
    threading.Thread(target=keepalive, daemon=True).start()
    revision = int(gateway.post("/v3/kv/range", {"key": b64(PREFIX), "range_end": b64(PREFIX_END),
                                                  "count_only": True})["header"]["revision"])
    ready = False
    while True:
        try:
            conn = http.client.HTTPConnection(*args.endpoint.rsplit(":", 1))
            request = {"create_request": {"key": b64(PREFIX), "range_end": b64(PREFIX_END),
                                          "start_revision": str(revision + 1)}}
            conn.request("POST", "/v3/watch", body=json.dumps(request))
            response = conn.getresponse()
            while True:
                line = response.readline()
                if not line:
                    break
                result = json.loads(line).get("result", {})
                if result.get("created") and not ready:
                    ready = True
                    gateway.post("/v3/kv/put", {"key": b64("/ready/" + args.name), "value": b64("1")})
                for event in result.get("events", []):
                    kv = event.get("kv", {})
                    revision = max(revision, int(kv.get("mod_revision", revision)))
                    if event.get("type") == "DELETE":
                        threading.Thread(target=take, args=(unb64(kv["key"]),), daemon=True).start()
        except Exception:
            time.sleep(0.05)


# ---------------------------------------------------------------- orchestrator

class Cluster:
    def __init__(self, opts, workdir):
        self.opts, self.dir = opts, workdir
        ports = free_ports(6)
        self.names = ["m1", "m2", "m3"]
        self.client_ports = dict(zip(self.names, ports[:3]))
        self.peer_ports = dict(zip(self.names, ports[3:]))
        self.initial = ",".join(f"{n}=http://127.0.0.1:{self.peer_ports[n]}" for n in self.names)
        self.members = {}
        self.workers = {}
        self.worker_member = {f"w{i + 1}": m for i, m in enumerate(self.names)}
        self.takes = os.path.join(workdir, "takes.log")
        open(self.takes, "w").close()

    def endpoint(self, member):
        return f"127.0.0.1:{self.client_ports[member]}"

    def start_member(self, member, state):
        log = open(os.path.join(self.dir, f"{member}.log"), "a")
        self.members[member] = subprocess.Popen([
            "etcd", "--name", member, "--data-dir", os.path.join(self.dir, member),
            "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[member]}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[member]}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[member]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[member]}",
            "--initial-cluster", self.initial, "--initial-cluster-state", state,
            "--initial-cluster-token", "minos-baseline",
            "--heartbeat-interval", str(self.opts.heartbeat_ms),
            "--election-timeout", str(self.opts.election_timeout_ms),
        ], stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def start_worker(self, name):
        log = open(os.path.join(self.dir, f"{name}.log"), "a")
        self.workers[name] = subprocess.Popen([
            sys.executable, os.path.abspath(__file__), "worker", "--name", name,
            "--endpoint", self.endpoint(self.worker_member[name]), "--ttl", str(self.opts.ttl),
            "--takes", self.takes,
        ], stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def healthy(self, member):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.client_ports[member], timeout=1)
            conn.request("GET", "/health")
            return json.loads(conn.getresponse().read()).get("health") == "true"
        except Exception:
            return False

    def wait(self, what, condition, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        raise RuntimeError(f"timed out waiting for {what}")

    def alive(self, process):
        return process is not None and process.poll() is None

    def any_gateway(self, avoid=()):
        for member in self.names:
            if member not in avoid and self.alive(self.members.get(member)) and self.healthy(member):
                return Gateway(self.endpoint(member))
        raise RuntimeError("no healthy etcd member")

    def leader(self):
        ids = {}
        leader_id = None
        for member in self.names:
            if not self.alive(self.members.get(member)):
                continue
            try:
                status = Gateway(self.endpoint(member)).post("/v3/maintenance/status", {})
            except Exception:
                continue
            ids[status["header"]["member_id"]] = member
            leader_id = status.get("leader") or leader_id
        return ids.get(leader_id)

    def worker_leases(self, gateway):
        answer = gateway.post("/v3/kv/range", {"key": b64("/workers/"), "range_end": b64("/workers0")})
        return {unb64(kv["key"]).split("/")[-1]: json.loads(unb64(kv["value"]))
                for kv in answer.get("kvs", [])}

    def ready(self, gateway, name):
        answer = gateway.post("/v3/kv/range", {"key": b64("/ready/" + name)})
        return int(answer.get("count", "0")) > 0

    def owners(self, gateway, serializable=False):
        # A serializable read answers from the member's own applied state, with
        # no leader needed: the earliest moment a reader could see a takeover.
        answer = gateway.post("/v3/kv/range", {"key": b64(PREFIX), "range_end": b64(PREFIX_END),
                                               "serializable": serializable})
        return {unb64(kv["key"]): unb64(kv["value"]) for kv in answer.get("kvs", [])}

    def restore(self, sessions):
        """Every member and worker runs; each session sits on its preferred worker."""
        for member in self.names:
            if not self.alive(self.members.get(member)):
                self.start_member(member, "existing")
        for member in self.names:
            self.wait(f"etcd member {member} healthy", lambda m=member: self.healthy(m))
        self.wait("an etcd leader", lambda: self.leader() is not None)
        gateway = self.any_gateway()
        for name in self.worker_member:
            if not self.alive(self.workers.get(name)):
                gateway.post("/v3/kv/deleterange", {"key": b64("/ready/" + name)})
                self.start_worker(name)
        for name in self.worker_member:
            self.wait(f"worker {name} ready", lambda n=name: self.ready(gateway, n))
        self.wait("worker leases", lambda: len(self.worker_leases(gateway)) == len(self.worker_member))
        leases = self.worker_leases(gateway)
        names = sorted(self.worker_member)
        current = self.owners(gateway)
        puts = []
        for index, session in enumerate(sessions):
            preferred = names[index % len(names)]
            if current.get(session) != preferred:
                puts.append({"request_put": {"key": b64(session), "value": b64(preferred),
                                             "lease": leases[preferred]["lease"]}})
        for start in range(0, len(puts), 100):  # etcd allows 128 operations per txn
            gateway.post("/v3/kv/txn", {"success": puts[start:start + 100]})
        return {name: info.get("ttl") for name, info in leases.items()}

    def stop(self):
        for process in list(self.workers.values()) + list(self.members.values()):
            if self.alive(process):
                try:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                    process.wait(timeout=10)
                except Exception:
                    pass


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    rank = -(-p * len(sorted_values) // 100)  # ceil
    return sorted_values[max(1, min(len(sorted_values), int(rank))) - 1]


def trial(cluster, opts, sessions, mode, number):
    cluster.restore(sessions)
    leader = cluster.leader()
    gateway = cluster.any_gateway()
    owners = cluster.owners(gateway)
    if mode == "leader-crash":
        victim = next(w for w, m in cluster.worker_member.items() if m == leader)
    else:
        candidates = sorted(w for w, m in cluster.worker_member.items() if m != leader)
        victim = candidates[number % len(candidates)]
    victim_member = cluster.worker_member[victim]
    affected = sorted(s for s, owner in owners.items() if owner == victim)
    observer = Gateway(cluster.endpoint(next(m for m in cluster.names if m != victim_member)), timeout=0.5)
    takes_before = os.path.getsize(cluster.takes)
    signals = {"crash": signal.SIGKILL, "leader-crash": signal.SIGKILL,
               "graceful": signal.SIGTERM, "freeze": signal.SIGSTOP}
    signalled_wall = datetime.datetime.now(datetime.timezone.utc).isoformat()
    started = time.monotonic()
    cluster.workers[victim].send_signal(signals[mode])
    if mode == "leader-crash":
        cluster.members[leader].kill()
    pending = set(affected)
    samples = {}
    polls = 0
    cap = opts.cap_ms / 1000.0
    while pending and time.monotonic() - started < cap:
        poll_started = time.monotonic()
        polls += 1
        try:
            current = cluster.owners(observer, serializable=True)
        except Exception:
            current = {}
        answered = time.monotonic()
        for session in list(pending):
            owner = current.get(session)
            if owner is not None and owner != victim:
                samples[session] = ((answered - started) * 1000.0, owner)
                pending.discard(session)
        pause = opts.poll_ms / 1000.0 - (time.monotonic() - poll_started)
        if pause > 0:
            time.sleep(pause)
    # Put the victim back.
    process = cluster.workers[victim]
    if mode == "freeze":
        process.kill()  # a frozen process dies of SIGKILL too
    process.wait(timeout=30)
    if mode == "leader-crash":
        cluster.members[leader].wait(timeout=30)
    with open(cluster.takes) as f:
        f.seek(takes_before)
        taken = {}
        for line in f:
            _, name, key, _ = line.split()
            taken.setdefault(key, set()).add(name)
    doubles = sorted(k for k, names in taken.items() if len(names) > 1)
    rows = []
    for session in affected:
        latency, owner = samples.get(session, (None, None))
        rows.append({"trial": number + 1, "session": session, "victim": victim,
                     "etcd_leader": leader, "signalled_at": signalled_wall,
                     "latency_ms": latency, "owner_after": owner})
    return rows, doubles, victim, leader, polls


def orchestrate(opts):
    modes = opts.mode or ["graceful", "crash", "leader-crash", "freeze"]
    order = ["graceful", "crash", "leader-crash", "freeze"]
    modes = [m for m in order if m in modes]
    cluster = Cluster(opts, opts.dir)
    sessions = [f"{PREFIX}bench-{i:05d}" for i in range(opts.sessions)]
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    report = {
        "baseline": "etcd lease + keep-alive + watch + txn takeover",
        "etcd_version": version,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {"cores": os.cpu_count(), "network": "loopback (127.0.0.1)",
                    "load_average_start": load_average()},
        "config": {"sessions": opts.sessions, "trials": opts.trials, "modes": modes,
                   "ttl_requested_s": opts.ttl, "keepalive_interval_ms": round(opts.ttl * 1000 / 3),
                   "etcd_heartbeat_ms": opts.heartbeat_ms,
                   "etcd_election_timeout_ms": opts.election_timeout_ms,
                   "cap_ms": opts.cap_ms, "poll_interval_ms": opts.poll_ms},
        "modes": [],
    }
    failures = 0
    try:
        for member in cluster.names:
            cluster.start_member(member, "new")
        granted = cluster.restore(sessions)
        report["config"]["ttl_granted_s"] = granted
        print(f"--- {version}: 3 members on loopback, {len(sessions)} session keys, "
              f"lease TTL requested {opts.ttl} s, granted {sorted(set(map(str, granted.values())))} s",
              file=sys.stderr)
        for mode in modes:
            rows, doubles_total, trials = [], [], 0
            for number in range(opts.trials):
                trial_rows, doubles, victim, leader, polls = trial(cluster, opts, sessions, mode, number)
                trials += 1
                rows.extend(trial_rows)
                doubles_total.extend({"trial": number + 1, "session": d} for d in doubles)
                back = [r["latency_ms"] for r in trial_rows if r["latency_ms"] is not None]
                lost = len(trial_rows) - len(back)
                print(f"{mode} trial {number + 1:>2}: victim worker {victim} (etcd leader {leader}), "
                      f"{len(trial_rows)} sessions, slowest {max(back, default=0):.1f} ms"
                      + (f", {lost} LOST" if lost else ""), file=sys.stderr)
            report["modes"].append({"mode": mode, "trials": trials, "double_owners": doubles_total,
                                    "samples": rows})
    finally:
        cluster.stop()

    cap = float(opts.cap_ms)
    print(f"etcd baseline: 3 members, {opts.sessions} sessions, lease TTL {opts.ttl} s "
          f"(keep-alive every {opts.ttl * 1000 / 3:.0f} ms), etcd heartbeat {opts.heartbeat_ms} ms, "
          f"election {opts.election_timeout_ms} ms, cap {opts.cap_ms} ms, {os.cpu_count()} cores, loopback, "
          f"load {report['machine']['load_average_start']}")
    report["machine"]["load_average_end"] = load_average()
    print(f"{'mode':<13} {'trials':>6} {'sessions':>8} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
          f"{'max ms':>9} {'mean ms':>9} {'lost':>5} {'double':>6} {'wrong':>6}")
    for entry in report["modes"]:
        values = sorted(r["latency_ms"] if r["latency_ms"] is not None else cap for r in entry["samples"])
        lost = sum(1 for r in entry["samples"] if r["latency_ms"] is None)
        mean = sum(values) / len(values) if values else 0.0
        summary = {"p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
                   "p99_ms": percentile(values, 99), "max_ms": values[-1] if values else 0.0,
                   "mean_ms": mean, "lost": lost, "double_owners": len(entry["double_owners"]),
                   "sessions": len(values)}
        entry["summary"] = summary
        failures += lost + len(entry["double_owners"])
        print(f"{entry['mode']:<13} {entry['trials']:>6} {len(values):>8} {summary['p50_ms']:>9.1f} "
              f"{summary['p90_ms']:>9.1f} {summary['p99_ms']:>9.1f} {summary['max_ms']:>9.1f} "
              f"{mean:>9.1f} {lost:>5} {len(entry['double_owners']):>6} {'-':>6}")
        for d in entry["double_owners"]:
            print(f"DOUBLE OWNER: {d['session']} taken by two workers in {entry['mode']} trial {d['trial']}",
                  file=sys.stderr)
        for r in entry["samples"]:
            if r["latency_ms"] is None:
                print(f"LOST: {r['session']} ({entry['mode']} trial {r['trial']}, victim {r['victim']})",
                      file=sys.stderr)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"raw samples and configuration written to {opts.json}", file=sys.stderr)
    return 1 if failures else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        parser = argparse.ArgumentParser(prog="baseline worker")
        parser.add_argument("--name", required=True)
        parser.add_argument("--endpoint", required=True)
        parser.add_argument("--ttl", type=int, required=True)
        parser.add_argument("--takes", required=True)
        worker(parser.parse_args(sys.argv[2:]))
        return 0
    parser = argparse.ArgumentParser(prog="bench-etcd-baseline.sh")
    parser.add_argument("--dir", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--mode", action="append",
                        choices=["graceful", "crash", "leader-crash", "freeze"])
    parser.add_argument("--ttl", type=int, default=1, help="lease TTL in seconds (etcd's granularity)")
    parser.add_argument("--cap-ms", type=int, default=10000)
    parser.add_argument("--poll-ms", type=int, default=5)
    parser.add_argument("--heartbeat-ms", type=int, default=50)
    parser.add_argument("--election-timeout-ms", type=int, default=300)
    parser.add_argument("--json")
    opts = parser.parse_args()
    if opts.sessions < 1 or opts.trials < 1 or opts.ttl < 1 or not 1 <= opts.poll_ms <= 5:
        parser.error("--sessions, --trials and --ttl must be positive; --poll-ms 1..5")
    return orchestrate(opts)


if __name__ == "__main__":
    sys.exit(main())
PY

keep=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep="$2"; shift 2 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
dir="$work/run"
if [ -n "$keep" ]; then
    rm -rf "$keep"
    mkdir -p "$keep"
    dir="$(cd "$keep" && pwd)"
fi
mkdir -p "$dir"
cp "$work/baseline.py" "$dir/baseline.py"
status=0
python3 "$dir/baseline.py" --dir "$dir" ${args[@]+"${args[@]}"} || status=$?
exit "$status"
