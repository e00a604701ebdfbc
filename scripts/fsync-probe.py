#!/usr/bin/env python3
"""The disk's side of a snapshot: how long a small fsync (a Raft log append)
waits while a large file (a snapshot) is written beside it.

    scripts/fsync-probe.py end|chunk [MIB] [DIR]

`end` syncs the large file once after writing it (minos before the paced
snapshot writer); `chunk` syncs it every 8 MiB as it grows (src/store/paced.rs).
A thread appends 200 bytes and fsyncs every 5 ms meanwhile; the line printed
gives those fsyncs' p50, p99 and slowest. Writes MIB (default 265, a million
sessions' snapshot) into DIR (default: a temporary directory), then deletes it.
"""
import os
import sys
import tempfile
import threading
import time

def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in ("end", "chunk"):
        print("usage: fsync-probe.py end|chunk [MIB] [DIR]", file=sys.stderr)
        sys.exit(2)
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 265
    with tempfile.TemporaryDirectory(dir=sys.argv[3] if len(sys.argv) > 3 else None) as d:
        probe(mode, size, d)


def probe(mode, size, d):
    lat, done = [], threading.Event()

    def small():
        fd = os.open(os.path.join(d, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        while not done.is_set():
            os.write(fd, b"x" * 200)
            t = time.monotonic()
            os.fsync(fd)
            lat.append((time.monotonic() - t) * 1000)
            time.sleep(0.005)
        os.close(fd)

    thread = threading.Thread(target=small)
    thread.start()
    time.sleep(0.5)
    first = len(lat)
    t0 = time.monotonic()
    fd = os.open(os.path.join(d, "big.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    block = os.urandom(1 << 20)
    for i in range(size):
        os.write(fd, block)
        if mode == "chunk" and i % 8 == 7:
            os.fdatasync(fd)
        time.sleep(0.004)  # the encoder is slower than the disk
    written = time.monotonic()
    os.fsync(fd)
    os.close(fd)
    os.rename(os.path.join(d, "big.tmp"), os.path.join(d, "big"))
    dfd = os.open(d, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    synced = time.monotonic()
    time.sleep(0.5)
    done.set()
    thread.join()
    ms = sorted(lat[first:])
    print(
        f"{mode}: {size} MiB written in {written - t0:.2f} s, last sync {synced - written:.2f} s; "
        f"{len(ms)} small fsyncs meanwhile: p50 {ms[len(ms) // 2]:.1f} ms, "
        f"p99 {ms[int(len(ms) * 0.99)]:.1f} ms, slowest {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
