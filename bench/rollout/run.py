#!/usr/bin/env python3
"""bench/rollout: `hidsctl rollout start --waves 1,10,50,100` to N simulated agents.

For each scenario, on a fresh etcd (flags printed): `hids-sim --agents N` with simulated
updates (--update-secs per host, 0.5 to 1.5 times it by hash(host_id); a stable share
failing their trial and rolling back), then one rollout, --json. Scenarios:

  complete  no failures: every wave ends with every host healthy;
  halt      --fail-percent of hosts roll back (default 10): the first wave halts
            the rollout and no later wave is written.

Prints per wave: hosts, healthy/failed/rolled back/pending, seconds (from the wave's
start: writing, then waiting for the hosts); the rollout's total; etcd and simulator
CPU over the rollout; and for the halt, that no desired document of a later wave
exists. Usage:

    sudo bench/rollout/run [--agents 100000] [--update-secs 60] [--fail-percent 10]
                           [--lease-ttl 600s] [--watch-streams 16] [--scenarios complete,halt]
                           [--json OUT]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import TICK, Etcd, cpu_ticks, status_kb, stop_process  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "target", "release")
ETCD_FLAGS = ["--quota-backend-bytes", str(8 << 30), "--snapshot-count", "100000",
              "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"]
DESIRED = """[[plugins]]
name = "process"
version = "2.0.0"
url = "http://127.0.0.1:9/hids-plugin-process-2.0.0"
sha256 = "%s"
""" % ("ab" * 32)


def desired_count(etcd):
    """How many desired documents etcd holds (etcdctl 3.4 has no --count-only)."""
    prefix = "/hids/v1/desired/"
    out = subprocess.run(["etcdctl", "--endpoints", etcd.url, "--command-timeout", "60s", "get", "--prefix",
                          prefix, "--keys-only"], capture_output=True, text=True,
                         env={**os.environ, "ETCDCTL_API": "3"})
    if out.returncode != 0:
        return -1
    return sum(1 for line in out.stdout.splitlines() if line.startswith(prefix))


def scenario(tmp, keys, args, name, fail_percent):
    etcd = Etcd(tmp, ETCD_FLAGS)
    sim = None
    try:
        cmd = [os.path.join(BIN, "hids-sim"), "--endpoints", etcd.url, "--agents", str(args.agents),
               "--trusted-key", f"{keys}/signing.pub", "--lease-ttl", args.lease_ttl,
               "--update-secs", str(args.update_secs), "--update-fail-percent", str(fail_percent),
               "--watch-streams", args.watch_streams]
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = sim.stdout.readline()
        if not ready.startswith("READY"):
            raise SystemExit(f"hids-sim: {ready!r}")
        fields = dict(kv.split("=", 1) for kv in ready.split()[1:])
        time.sleep(3)
        desired = os.path.join(tmp, "desired.toml")
        with open(desired, "w") as f:
            f.write(DESIRED)
        e0, s0 = cpu_ticks(etcd.proc.pid), cpu_ticks(sim.pid)
        started = time.monotonic()
        out = subprocess.run([os.path.join(BIN, "hidsctl"), "--endpoints", etcd.url, "rollout", "start",
                              "--file", desired, "--all", "--key", f"{keys}/signing.key",
                              "--waves", args.waves, "--max-failure-percent", str(args.max_failure_percent),
                              "--wave-timeout", args.wave_timeout, "--json"],
                             capture_output=True, text=True, timeout=7200)
        wall = time.monotonic() - started
        try:
            res = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise SystemExit(f"hidsctl rollout failed ({out.returncode}): {out.stderr.strip()}")
        res["scenario"] = name
        res["exit_code"] = out.returncode
        res["wall_secs"] = wall
        res["fail_percent"] = fail_percent
        res["registration_secs"] = float(fields["registration_secs"])
        res["etcd_cpu_secs"] = (cpu_ticks(etcd.proc.pid) - e0) / TICK
        res["sim_cpu_secs"] = (cpu_ticks(sim.pid) - s0) / TICK
        res["sim_rss_mb"] = status_kb(sim.pid, "VmRSS") / 1024
        res["etcd_rss_mb"] = status_kb(etcd.proc.pid, "VmRSS") / 1024
        res["desired_documents"] = desired_count(etcd)
        return res
    finally:
        if sim:
            stop_process(sim, timeout=60)
        etcd.stop()


def show(r):
    print(f"\n## {r['scenario']}: {r['agents']} agents, state {r['state']} "
          f"(exit {r['exit_code']}), {r['elapsed_secs']:.1f} s; failing share {r['fail_percent']}%")
    if r.get("reason"):
        print(f"reason: {r['reason']}")
    print(f"{'wave':>4} {'up to':>6} {'targets':>8} {'healthy':>8} {'failed':>7} {'rolled back':>11} "
          f"{'pending':>8} {'secs':>7} {'state':>9}")
    for i, w in enumerate(r["waves"], 1):
        print(f"{i:>4} {w['percent']:>5}% {w['targets']:>8} {w['healthy']:>8} {w['failed']:>7} "
              f"{w['rolled_back']:>11} {w['pending']:>8} {w['elapsed_secs']:>7.1f} {w['state']:>9}")
    written = sum(w["targets"] for w in r["waves"] if w["generation"])
    print(f"desired documents in etcd {r['desired_documents']} (hosts written {written}); "
          f"etcd CPU {r['etcd_cpu_secs']:.0f} s, sim CPU {r['sim_cpu_secs']:.0f} s over the rollout; "
          f"sim RSS {r['sim_rss_mb']:.0f} MB, etcd RSS {r['etcd_rss_mb']:.0f} MB; "
          f"registration {r['registration_secs']:.0f} s")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=100000)
    ap.add_argument("--update-secs", type=float, default=60.0)
    ap.add_argument("--fail-percent", type=float, default=10.0)
    ap.add_argument("--waves", default="1,10,50,100")
    ap.add_argument("--max-failure-percent", type=float, default=5.0)
    ap.add_argument("--wave-timeout", default="15m")
    ap.add_argument("--lease-ttl", default="600s")
    ap.add_argument("--scenarios", default="complete,halt")
    ap.add_argument("--watch-streams", default="16",
                    help="hids-sim --watch-streams: 16 shared streams (as behind etcd's gRPC proxy) keep etcd "
                         "at ~3 GB for 100,000 agents; `own` is ~8 GB")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hids-rollout-")
    keys = os.path.join(tmp, "keys")
    subprocess.run([os.path.join(BIN, "hidsctl"), "keygen", "--out", keys], check=True, stdout=subprocess.DEVNULL)
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"# {version}; flags {' '.join(ETCD_FLAGS)}; {os.cpu_count()} CPUs; {args.agents} agents; "
          f"lease TTL {args.lease_ttl}; watch streams {args.watch_streams}; update {args.update_secs} s per host (x0.5-1.5); waves {args.waves}; "
          f"halt above {args.max_failure_percent}%")
    results = []
    try:
        for name in args.scenarios.split(","):
            fail = 0.0 if name == "complete" else args.fail_percent
            r = scenario(tmp, keys, args, name, fail)
            r["agents"] = args.agents
            results.append(r)
            show(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
