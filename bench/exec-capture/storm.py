#!/usr/bin/env python3
"""Exec storm: N short-lived processes with distinctive argv, as fast as the machine goes.

Usage: storm.py TAG N WORKERS [PROGRAM] [--wait-stdin]

Each worker is a process whose argv carries `storm-worker-TAG`, so the benchmark can
find it (and attribute its children) even from a new PID namespace. Exec i runs
`PROGRAM storm-TAG-i` (default /bin/true) through posix_spawn, which is vfork+exec: the
cheapest way to start a process from Python. With --wait-stdin the storm starts only
after a line on stdin, once the workers are up (so the caller can find them in /proc).
Prints one line: `started N in S s, workload cpu C s`.
"""
import os
import resource
import sys
import time


def worker(tag, program, lo, hi):
    env = {"PATH": "/usr/bin:/bin"}
    for i in range(lo, hi):
        pid = os.posix_spawn(program, [program, f"storm-{tag}-{i}"], env)
        os.waitpid(pid, 0)


def main():
    wait_stdin = "--wait-stdin" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--wait-stdin"]
    tag, n, workers = args[0], int(args[1]), int(args[2])
    program = args[3] if len(args) > 3 else "/bin/true"
    # Let the tools see the workers before the storm starts.
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    per = (n + workers - 1) // workers
    for w in range(workers):
        lo, hi = w * per, min(n, (w + 1) * per)
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(go_w)
            os.set_inheritable(ready_w, True)
            os.set_inheritable(go_r, True)
            # Re-exec so the worker's argv carries the marker.
            os.execv(sys.executable, [sys.executable, __file__, "--worker", tag, str(lo), str(hi), program,
                                      str(ready_w), str(go_r), f"storm-worker-{tag}"])
        pids.append(pid)
    os.close(ready_w)
    os.close(go_r)
    for _ in pids:
        os.read(ready_r, 1)
    if wait_stdin:
        print("ready", flush=True)
        sys.stdin.readline()
    start = time.monotonic()
    os.write(go_w, b"g" * len(pids))
    for pid in pids:
        os.waitpid(pid, 0)
    elapsed = time.monotonic() - start
    # CPU of the workers and everything they ran: the exec'ing workload, which in-kernel
    # capture (ours and bpftrace's) makes more expensive.
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"started {n} in {elapsed:.3f} s, workload cpu {ru.ru_utime + ru.ru_stime:.3f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, tag, lo, hi, program, ready_w, go_r, _marker = sys.argv
        os.write(int(ready_w), b"r")
        os.read(int(go_r), 1)
        os.close(int(ready_w))
        os.close(int(go_r))
        worker(tag, program, int(lo), int(hi))
    else:
        main()
