#!/usr/bin/env python3
"""bench/fleet: the control plane at 1,000 / 10,000 / 100,000 simulated agents.

For each size, on a fresh etcd (same flags every time, printed):
  1. baseline: `hids-fleet-baseline` - N plain watchers (own streams, same connection
     count), a writer putting N keys in 128-op transactions, each watcher answering with
     a plain put; the writer follows the answers. No signatures, leases or JSON.
  2. a fresh etcd again, then `hids-sim --agents N`: registration time, etcd RSS/CPU,
     etcd's own watcher and watch-stream counts, an idle minute (--idle-secs): etcd and
     simulator CPU (keepalives) and etcd's puts per second (status writes: the agents
     publish their status on every guard sample, --guard-interval, through the agent's
     own change detection), and then
     `hidsctl stop --all`, `hidsctl push --percent 10` (canary) and a push whose
     settings go to a large blob, each --runs times, with --wait: total time and the
     per-agent latency from write to acknowledgement (p50/p99/max).
Medians over runs. Usage:

    sudo bench/fleet/run [--sizes 1000,10000,100000] [--runs 3] [--lease-ttl 600s]
                         [--watch-streams own] [--blob-kb 32] [--idle-secs 60]
                         [--guard-interval 5s] [--only-idle]

--only-idle measures registration and the idle minute only (no operations, no
baseline): at 100,000 agents the whole benchmark takes most of an hour.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import TICK, Etcd, cpu_ticks, status_kb, stop_process  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "target", "release")
ETCD_FLAGS = ["--quota-backend-bytes", str(8 << 30), "--snapshot-count", "100000"]


def fresh_etcd(tmp):
    return Etcd(tmp, ETCD_FLAGS)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def baseline(tmp, n, runs, connections, watch_streams):
    etcd = fresh_etcd(tmp)
    try:
        out = subprocess.run(
            [os.path.join(BIN, "hids-fleet-baseline"), "--endpoints", etcd.url, "--keys", str(n),
             "--rounds", str(runs), "--connections", str(connections), "--watch-streams", watch_streams],
            capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise SystemExit(f"baseline failed: {out.stderr}")
        rounds = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        return {
            "setup_secs": rounds[0]["setup_secs"],
            "elapsed_secs": median([r["elapsed_secs"] for r in rounds]),
            "p50_ms": median([r["ack_ms"]["p50"] for r in rounds]),
            "p99_ms": median([r["ack_ms"]["p99"] for r in rounds]),
            "max_ms": median([r["ack_ms"]["max"] for r in rounds]),
            "etcd_rss_mb": status_kb(etcd.proc.pid, "VmRSS") / 1024,
        }
    finally:
        etcd.stop()


def puts(etcd):
    """etcd's count of puts so far (3.4 names it both ways; either will do)."""
    m = etcd.metrics()
    for name in ("etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total"):
        if name in m:
            return m[name]
    return float("nan")


def idle(etcd, sim, secs, res):
    """An idle spell: etcd and simulator CPU, and etcd's puts per second (status writes,
    nothing else writes while idle)."""
    e0, s0, p0 = cpu_ticks(etcd.proc.pid), cpu_ticks(sim.pid), puts(etcd)
    time.sleep(secs)
    res["idle_secs"] = secs
    res["idle_etcd_cpu_pct"] = (cpu_ticks(etcd.proc.pid) - e0) / TICK * 100 / secs
    res["idle_sim_cpu_pct"] = (cpu_ticks(sim.pid) - s0) / TICK * 100 / secs
    res["idle_puts_per_sec"] = (puts(etcd) - p0) / secs


def hidsctl(url, args, key):
    started = time.monotonic()
    out = subprocess.run([os.path.join(BIN, "hidsctl"), "--endpoints", url] + args +
                         ["--key", key, "--wait", "300s", "--json"],
                         capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    try:
        res = json.loads(out.stdout)
    except json.JSONDecodeError:
        print(f"  hidsctl {args} failed: {out.stderr.strip()}", file=sys.stderr)
        return None
    res["wall_secs"] = wall
    return res


def fleet(tmp, n, args, keys):
    etcd = fresh_etcd(tmp)
    sim = None
    try:
        e0 = cpu_ticks(etcd.proc.pid)
        cmd = [os.path.join(BIN, "hids-sim"), "--endpoints", etcd.url, "--agents", str(n),
               "--trusted-key", f"{keys}/signing.pub", "--lease-ttl", args.lease_ttl,
               "--watch-streams", args.watch_streams, "--guard-interval", args.guard_interval]
        if args.connections:
            cmd += ["--connections", str(args.connections)]
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = sim.stdout.readline()
        if not ready.startswith("READY"):
            raise SystemExit(f"hids-sim: {ready!r}")
        fields = dict(kv.split("=", 1) for kv in ready.split()[1:])
        res = {"agents": n, "registration_secs": float(fields["registration_secs"]),
               "connections": int(fields["connections"]),
               "agent_task_bytes": int(fields.get("agent_task_bytes", 0)),
               "etcd_cpu_registration_secs": (cpu_ticks(etcd.proc.pid) - e0) / TICK}
        time.sleep(3)
        m = etcd.metrics()
        res["etcd_watchers"] = int(m.get("etcd_debugging_mvcc_watcher_total", -1))
        res["etcd_watch_streams"] = int(m.get("etcd_debugging_mvcc_watch_stream_total", -1))
        idle(etcd, sim, args.idle_secs, res)
        res["etcd_rss_mb"] = status_kb(etcd.proc.pid, "VmRSS") / 1024
        res["sim_rss_mb"] = status_kb(sim.pid, "VmRSS") / 1024
        res["sim_kb_per_agent"] = status_kb(sim.pid, "VmRSS") / n
        res["ops"] = {}
        if args.only_idle:
            return res
        canary = os.path.join(tmp, "canary.toml")
        with open(canary, "w") as f:
            f.write('log_level = "debug"\n')
        blob = os.path.join(tmp, "blob.toml")
        with open(blob, "w") as f:
            rules = ["rule-%06d" % i for i in range(args.blob_kb * 1024 // 14)]
            f.write('[[plugins]]\nname = "process"\nargs = %s\n' % json.dumps(rules))
        key = f"{keys}/signing.key"
        ops = {"stop --all": ["stop", "--all"],
               "push --percent 10": ["push", "--percent", "10", "--file", canary],
               f"push --all ({args.blob_kb} KB blob)": ["push", "--all", "--file", blob]}
        for name, op in ops.items():
            runs = []
            for _ in range(args.runs):
                e0, s0 = cpu_ticks(etcd.proc.pid), cpu_ticks(sim.pid)
                r = hidsctl(etcd.url, op, key)
                if r is None:
                    continue
                r["etcd_cpu_secs"] = (cpu_ticks(etcd.proc.pid) - e0) / TICK
                r["sim_cpu_secs"] = (cpu_ticks(sim.pid) - s0) / TICK
                runs.append(r)
                if r["acked"] != r["targets"]:
                    print(f"  {name}: only {r['acked']}/{r['targets']} acknowledged", file=sys.stderr)
                time.sleep(2)
            if not runs:
                res["ops"][name] = {"targets": 0, "acked_all": False, "elapsed_secs": float("nan"),
                                    "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"),
                                    "etcd_cpu_secs": float("nan"), "sim_cpu_secs": float("nan"),
                                    "all_runs_secs": []}
                continue
            res["ops"][name] = {
                "targets": runs[0]["targets"],
                "acked_all": all(r["acked"] == r["targets"] for r in runs),
                "elapsed_secs": median([r["elapsed_secs"] for r in runs]),
                "p50_ms": median([r["ack_ms"]["p50"] for r in runs if r.get("ack_ms")]),
                "p99_ms": median([r["ack_ms"]["p99"] for r in runs if r.get("ack_ms")]),
                "max_ms": median([r["ack_ms"]["max"] for r in runs if r.get("ack_ms")]),
                "etcd_cpu_secs": median([r["etcd_cpu_secs"] for r in runs]),
                "sim_cpu_secs": median([r["sim_cpu_secs"] for r in runs]),
                "all_runs_secs": [round(r["elapsed_secs"], 2) for r in runs],
            }
        res["etcd_rss_after_mb"] = status_kb(etcd.proc.pid, "VmRSS") / 1024
        res["sim_peak_rss_mb"] = status_kb(sim.pid, "VmHWM") / 1024
        return res
    finally:
        if sim:
            stop_process(sim, timeout=30)
        etcd.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lease-ttl", default="600s")
    ap.add_argument("--watch-streams", default="own")
    ap.add_argument("--connections", type=int, default=0)
    ap.add_argument("--blob-kb", type=int, default=32)
    ap.add_argument("--idle-secs", type=int, default=60)
    ap.add_argument("--guard-interval", default="5s",
                    help="hids-sim --guard-interval: how often every agent publishes its status (the agent's default)")
    ap.add_argument("--only-idle", action="store_true",
                    help="registration and the idle spell only: no operations, no baseline")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hids-fleet-")
    keys = os.path.join(tmp, "keys")
    subprocess.run([os.path.join(BIN, "hidsctl"), "keygen", "--out", keys], check=True, stdout=subprocess.DEVNULL)
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"# {version}; flags {' '.join(ETCD_FLAGS)}; {os.cpu_count()} CPUs; lease TTL {args.lease_ttl}; "
          f"watch streams {args.watch_streams}; runs {args.runs}")
    results = []
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            r = fleet(tmp, n, args, keys)
            results.append(r)
            print(f"\n## {n} agents ({r['connections']} connections)")
            print(f"registration {r['registration_secs']:.1f} s (etcd CPU {r['etcd_cpu_registration_secs']:.1f} s); "
                  f"etcd watchers {r['etcd_watchers']}, watch streams {r['etcd_watch_streams']}; "
                  f"etcd RSS {r['etcd_rss_mb']:.0f} MB; sim RSS {r['sim_rss_mb']:.0f} MB "
                  f"({r['sim_kb_per_agent']:.1f} KB/agent); agent task {r['agent_task_bytes']} bytes")
            print(f"idle {r['idle_secs']} s: etcd puts {r['idle_puts_per_sec']:.1f}/s "
                  f"(status writes; guard sample every {args.guard_interval}); "
                  f"CPU etcd {r['idle_etcd_cpu_pct']:.0f}% sim {r['idle_sim_cpu_pct']:.0f}%")
            sys.stdout.flush()
            if args.only_idle:
                continue
            r["baseline"] = baseline(tmp, n, args.runs, r["connections"], args.watch_streams)
            b = r["baseline"]
            print(f"{'operation':32} {'targets':>8} {'all acked':>9} {'total s':>8} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'max ms':>8} {'etcd cpu':>8} {'sim cpu':>8}")
            for name, o in r["ops"].items():
                print(f"{name:32} {o['targets']:>8} {str(o['acked_all']):>9} {o['elapsed_secs']:>8.2f} "
                      f"{o['p50_ms']:>8.0f} {o['p99_ms']:>8.0f} {o['max_ms']:>8.0f} {o['etcd_cpu_secs']:>8.1f} "
                      f"{o['sim_cpu_secs']:>8.1f}")
            print(f"{'baseline: plain etcd':32} {n:>8} {'True':>9} {b['elapsed_secs']:>8.2f} {b['p50_ms']:>8.0f} "
                  f"{b['p99_ms']:>8.0f} {b['max_ms']:>8.0f}   (watchers set up in {b['setup_secs']:.1f} s, "
                  f"etcd RSS {b['etcd_rss_mb']:.0f} MB)")
            stop = r["ops"]["stop --all"]["elapsed_secs"]
            print(f"stop --all / baseline: {stop / b['elapsed_secs']:.1f}x; after the runs: etcd RSS "
                  f"{r['etcd_rss_after_mb']:.0f} MB, sim peak RSS {r['sim_peak_rss_mb']:.0f} MB")
            sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
