#!/usr/bin/env python3
"""bench/enroll: what per-host etcd credentials cost at fleet scale.

For each bcrypt cost (etcd --bcrypt-cost; 10 is etcd's default, 4 its minimum), on a
fresh etcd 3.4 with authentication on (`hidsctl bootstrap`):
  1. enrollment: `hidsctl --user root enroll --hosts-file F --out DIR` up to each of
     --steps hosts (the users accumulate): wall time, hosts/s, etcd CPU and RSS. etcd
     rebuilds its whole permission cache (every user, every role) on each user or role
     change, in its serial apply loop, so the cost of one host grows with the number
     already enrolled: the steps fit t(N) = a + b*N per host, and the totals for
     --extrapolate sizes (10,000 and 100,000: hours to days) are computed from that
     fit, printed as extrapolated (at cost >= 8 with the slope of the cost-4 run, which
     has more hosts). Then --rotate hosts are enrolled again (--force): a rotation.
  2. Authenticate: `hids-auth-bench` sends N Authenticate calls for the enrolled users
     from 4 connections, 64 in flight (a fleet reconnecting after an etcd restart):
     wall time, rate, latency, etcd CPU per call; at cost >= 8 only --auth-sample
     calls, extrapolated.
Usage:

    bench/enroll/run [--costs 4,10] [--steps 1000,2000,3000,4000] [--high-cost-steps 250,500]
                     [--auths 10000,100000] [--auth-sample 1000]
                     [--extrapolate 10000,100000] [--concurrency 32] [--rotate 200]

HIDS_BENCH_BIN=DIR takes hidsctl and hids-auth-bench from DIR (default: target/release,
else target/debug; each line says which binary it used).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import TICK, Etcd, cpu_ticks, status_kb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("HIDS_BENCH_BIN")


def binary(name):
    """HIDS_BENCH_BIN/name, else the release build, else the debug build (said in the output)."""
    dirs = [BIN] if BIN else [os.path.join(ROOT, "target", p) for p in ("release", "debug")]
    for d in dirs:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise SystemExit(f"{name} not found in {dirs}: cargo build --release -p hidsctl -p hids-sim")
ETCD_FLAGS = ["--quota-backend-bytes", str(8 << 30), "--snapshot-count", "100000"]
# Every run must end by itself: no single step may take longer than this.
STEP_TIMEOUT_SECS = 3600


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def hidsctl(etcd, *args, user=("root", "rootpw")):
    cmd = [binary("hidsctl"), "--endpoints", etcd.url]
    if user:
        cmd += ["--user", user[0], "--password", user[1]]
    return subprocess.run(cmd + list(args), capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_SECS)


def etcd_figures(etcd):
    m = etcd.metrics()
    return {
        "rss_mb": m.get("process_resident_memory_bytes", 0) / 1e6,
        "db_mb": m.get("etcd_mvcc_db_total_size_in_bytes", 0) / 1e6,
    }


def enroll(etcd, tmp, out_dir, first, last, concurrency, force=False):
    hosts = os.path.join(tmp, f"hosts-{first}-{last}.txt")
    with open(hosts, "w") as f:
        for i in range(first, last):
            f.write(f"host-{i:07d}\n")
    cpu0, ctl0, t0 = cpu_ticks(etcd.proc.pid), children_cpu(), time.monotonic()
    out = hidsctl(etcd, "enroll", "--hosts-file", hosts, "--out", out_dir, "--json",
                  "--concurrency", str(concurrency), *(["--force"] if force else []))
    wall = time.monotonic() - t0
    etcd_cpu = (cpu_ticks(etcd.proc.pid) - cpu0) / TICK
    ctl_cpu = children_cpu() - ctl0
    try:
        res = json.loads(out.stdout)
    except ValueError:
        raise SystemExit(f"hidsctl enroll failed: {out.stderr[-2000:]}")
    if res["failed"]:
        raise SystemExit(f"{len(res['failed'])} enrollments failed, e.g. {res['failed'][0]}")
    return {"hosts": last - first, "wall_secs": wall, "etcd_cpu_secs": etcd_cpu,
            "hidsctl_cpu_secs": ctl_cpu}


def authenticate(etcd, out_dir, count):
    cpu0, t0 = cpu_ticks(etcd.proc.pid), time.monotonic()
    out = subprocess.run(
        [binary("hids-auth-bench"), "--endpoints", etcd.url, "--credentials-dir", out_dir,
         "--count", str(count), "--connections", "4", "--in-flight", "64"],
        capture_output=True, text=True, timeout=STEP_TIMEOUT_SECS)
    wall = time.monotonic() - t0
    etcd_cpu = (cpu_ticks(etcd.proc.pid) - cpu0) / TICK
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"hids-auth-bench failed: {out.stderr[-2000:]}")
    res = json.loads(lines[-1])
    res["etcd_cpu_secs"] = etcd_cpu
    res["wall_secs"] = wall
    res["binary"] = binary("hids-auth-bench")
    return res


def fit(points):
    """Least squares y = a + b*x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def enroll_steps(etcd, tmp, out_dir, steps, concurrency):
    """Enrolls up to each step; returns [(mean users during the step, ms/host, etcd CPU ms/host, RSS MB)]."""
    points, enrolled, total = [], 0, 0.0
    for size in steps:
        r = enroll(etcd, tmp, out_dir, enrolled, size, concurrency)
        total += r["wall_secs"]
        per_host_ms = r["wall_secs"] / r["hosts"] * 1000
        cpu_ms = r["etcd_cpu_secs"] / r["hosts"] * 1000
        fig = etcd_figures(etcd)
        print(f"enroll {enrolled}->{size}: {r['wall_secs']:.1f} s, {per_host_ms:.1f} ms/host "
              f"({r['hosts'] / r['wall_secs']:.1f} hosts/s); etcd CPU {r['etcd_cpu_secs']:.1f} s "
              f"({cpu_ms:.1f} ms/host), hidsctl CPU {r['hidsctl_cpu_secs']:.1f} s; etcd RSS "
              f"{fig['rss_mb']:.0f} MB with {size} users+roles, db {fig['db_mb']:.0f} MB "
              f"[{size} enrolled in {total:.0f} s, measured]", flush=True)
        points.append(((enrolled + size) / 2, per_host_ms, cpu_ms, fig["rss_mb"], size))
        enrolled = size
    return points, enrolled


def extrapolate(points, sizes, base=None):
    """Totals for `sizes` from the steps' fit of etcd CPU per host, a + b*N: etcd's apply
    loop is serial, so on an idle machine its CPU time is its wall time (the wall-time
    fit, printed too, carries whatever else the machine was doing). With `base` (the
    cost-4 fit), the slope is taken from it and only the offset from these steps: a few
    hundred hosts measure the bcrypt hash well but the slope poorly."""
    a, b = fit([(n, ms) for n, ms, _, _, _ in points])
    ca, cb = fit([(n, ms) for n, _, ms, _, _ in points])
    ra, rb = fit([(size, rss) for _, _, _, rss, size in points])
    print(f"fit: one host costs etcd {ca:.2f} ms + {cb * 1000:.2f} ms per 1,000 hosts already enrolled "
          f"(wall here {a:.2f} + {b * 1000:.2f}); RSS {ra:.0f} MB + {rb * 1000:.1f} MB per 1,000", flush=True)
    if base:
        cb = base[1]
        ca = sum(ms - cb * n for n, _, ms, _, _ in points) / len(points)
        print(f"with the cost-4 slope: one host costs etcd {ca:.2f} ms + {cb * 1000:.2f} ms per 1,000", flush=True)
    for size in sizes:
        total = ca * size + cb * size * size / 2
        print(f"  => {size} hosts (extrapolated): enrollment {total / 1000:.0f} s of etcd CPU ({total / 3.6e6:.1f} h); "
              f"enrolling one more host then takes {(ca + cb * size) / 1000:.2f} s of etcd's serial apply loop"
              f"{'' if base else f'; RSS about {ra + rb * size:.0f} MB'}", flush=True)
    return ca, cb


def rotate(etcd, tmp, out_dir, enrolled, count, concurrency, cpu_fit):
    """Re-enrolls the last `count` hosts (--force): one password change each."""
    r = enroll(etcd, tmp, out_dir, enrolled - count, enrolled, concurrency, force=True)
    cpu_ms = r["etcd_cpu_secs"] / r["hosts"] * 1000
    fresh = cpu_fit[0] + cpu_fit[1] * enrolled
    print(f"rotate {count} of {enrolled}: {r['wall_secs']:.1f} s, {r['wall_secs'] / count * 1000:.1f} ms/host; "
          f"etcd CPU {cpu_ms:.1f} ms/host (a first enrollment at {enrolled}: {fresh:.1f} ms by the fit)", flush=True)


def auth_figures(etcd, out_dir, auths, sample, cost):
    """At a high cost one sample of `sample` calls stands for every size (same per-call cost)."""
    sampled = authenticate(etcd, out_dir, sample) if cost >= 8 else None
    for n in auths:
        r, m = (sampled, sample) if sampled else (authenticate(etcd, out_dir, n), n)
        per_call_ms = r["etcd_cpu_secs"] / m * 1000
        wall = r["elapsed_secs"] * n / m
        how = f" (extrapolated from {m})" if m != n else ""
        print(f"authenticate x{n}: {wall:.1f} s{how}, {r['per_sec']:.0f}/s, latency p50 {r['ms']['p50']:.1f} ms "
              f"p99 {r['ms']['p99']:.1f} ms; etcd CPU {r['etcd_cpu_secs']:.1f} s for {m} "
              f"({per_call_ms:.2f} ms/call); {r['users']} distinct users, errors {r['errors']}"
              f"{' (' + str(r['first_error']) + ')' if r['errors'] else ''} [{r['binary']}]", flush=True)


def one_cost(tmp, cost, args, base):
    print(f"\n== bcrypt cost {cost}: etcd {' '.join(ETCD_FLAGS)} --bcrypt-cost {cost}", flush=True)
    etcd = Etcd(tmp, ETCD_FLAGS + ["--bcrypt-cost", str(cost)])
    out_dir = tempfile.mkdtemp(dir=tmp, prefix=f"creds-{cost}-")
    cpu_fit = None
    try:
        r = hidsctl(etcd, "bootstrap", "--root-password", "rootpw", "--operator-password", "oppw",
                    user=None)
        if r.returncode != 0:
            raise SystemExit(f"bootstrap failed: {r.stderr}")
        print(f"etcd after bootstrap: RSS {etcd_figures(etcd)['rss_mb']:.0f} MB", flush=True)
        steps = args.high_cost_steps if cost >= 8 else args.steps
        points, enrolled = enroll_steps(etcd, tmp, out_dir, steps, args.concurrency)
        if len(points) >= 2:
            cpu_fit = extrapolate(points, args.extrapolate, base if cost >= 8 else None)
            if args.rotate:
                rotate(etcd, tmp, out_dir, enrolled, min(args.rotate, enrolled), args.concurrency, cpu_fit)
        auth_figures(etcd, out_dir, args.auths, args.auth_sample, cost)
        fig = etcd_figures(etcd)
        print(f"etcd at the end: RSS {fig['rss_mb']:.0f} MB, VmHWM {status_kb(etcd.proc.pid, 'VmHWM') / 1024:.0f} MB",
              flush=True)
    finally:
        etcd.stop()
        shutil.rmtree(out_dir, ignore_errors=True)
    return cpu_fit


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--costs", type=ints, default=[4, 10])
    ap.add_argument("--steps", type=ints, default=[1000, 2000, 3000, 4000])
    ap.add_argument("--high-cost-steps", type=ints, default=[250, 500])
    ap.add_argument("--extrapolate", type=ints, default=[10000, 100000])
    ap.add_argument("--auths", type=ints, default=[10000, 100000])
    ap.add_argument("--auth-sample", type=int, default=1000,
                    help="at bcrypt cost >= 8, Authenticate calls actually made")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rotate", type=int, default=200,
                    help="after the steps, re-enroll this many hosts (--force): password rotation")
    args = ap.parse_args()
    print(f"bench/enroll: {os.cpu_count()} CPUs, etcd {subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.split()[2]}, "
          f"hidsctl {binary('hidsctl')}", flush=True)
    tmp = tempfile.mkdtemp(prefix="hids-bench-enroll-")
    try:
        base = None
        for cost in args.costs:
            fitted = one_cost(tmp, cost, args, base)
            base = base or fitted
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
