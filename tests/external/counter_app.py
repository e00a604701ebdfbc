#!/usr/bin/env python3
"""A small external handler app for minos, in Python's standard library only.

It serves the protocol of docs/external-handlers.md for the kind `counter`:

    state  {"n": int, "log": [{"add": k, "epoch": e}, ...], "ticks": int}
    create {"n": 5} (initial, optional)        -> n = 5
    call   {"add": k}                          -> n += k, reply {"n": n}
    call   {"get": true}                       -> reply {"n": n}, no new state (a read)
    call   {"tick_in_ms": ms}                  -> a timer ms from now, reply "armed"
    call   {"refuse": "why"}                   -> HTTP 422 {"error": "why"}
    call   {"slow": true, "add": k}            -> like add, but waits while held (below)
    deadline                                   -> ticks += 1, no further timer

Control routes for the test that runs it (not part of the protocol):

    POST /control/hold     slow calls wait until released
    POST /control/release  let every waiting slow call answer
    GET  /control/stats    {"ops": {op: count}, "waiting": n}

Usage: counter_app.py PORT
"""

import datetime
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
RELEASED = threading.Event()
RELEASED.set()
STATS = {"ops": {}, "waiting": 0}


def now_from(request):
    return datetime.datetime.fromisoformat(request["now"].replace("Z", "+00:00"))


def rfc3339(at):
    return at.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def handle(request):
    """The answer to one protocol request: (status, body)."""
    op = request["op"]
    with LOCK:
        STATS["ops"][op] = STATS["ops"].get(op, 0) + 1
    if op == "ping":
        return 200, {}
    if op == "create":
        initial = request.get("initial") or {}
        return 200, {"state": {"n": int(initial.get("n", 0)), "log": [], "ticks": 0}}
    fence = {"epoch": request["epoch"], "version": request["version"]}
    state = request["state"]
    if op == "deadline":
        state = dict(state, ticks=state["ticks"] + 1)
        return 200, dict(fence, state=state, deadline=None)
    msg = request["msg"]
    if "refuse" in msg:
        return 422, {"error": msg["refuse"]}
    if msg.get("get"):
        return 200, dict(fence, reply={"n": state["n"]})
    if "tick_in_ms" in msg:
        at = now_from(request) + datetime.timedelta(milliseconds=int(msg["tick_in_ms"]))
        return 200, dict(fence, reply="armed", state=state, deadline=rfc3339(at))
    if msg.get("slow"):
        with LOCK:
            STATS["waiting"] += 1
        RELEASED.wait(60)
        with LOCK:
            STATS["waiting"] -= 1
    if "add" in msg:
        k = int(msg["add"])
        entry = {"add": k, "epoch": request["epoch"]}
        state = dict(state, n=state["n"] + k, log=state["log"] + [entry])
        return 200, dict(fence, reply={"n": state["n"]}, state=state, deadline=request["deadline"])
    return 422, {"error": "unknown message"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without TCP_NODELAY the
    # body waits for the delayed ACK of the headers (40 ms a call).
    disable_nagle_algorithm = True

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/control/stats":
            with LOCK:
                self.answer(200, STATS)
        else:
            self.answer(404, {"error": "no such route"})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length) if length else b""
        if self.path == "/control/hold":
            RELEASED.clear()
            return self.answer(200, {})
        if self.path == "/control/release":
            RELEASED.set()
            return self.answer(200, {})
        try:
            request = json.loads(body)
        except ValueError:
            return self.answer(400, {"error": "not JSON"})
        status, answer = handle(request)
        self.answer(status, answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print(f"counter app on 127.0.0.1:{sys.argv[1]}", flush=True)
    server.serve_forever()
