#!/usr/bin/env python3
"""bench/fleet: the control plane at 1,000 / 10,000 / 100,000 simulated agents.

For each size, on a fresh etcd (same flags every time, printed; the fleet settings of
docs/control-plane.md):
  1. baseline: `hids-fleet-baseline` - N plain watchers (own streams, same connection
     count), a writer putting N keys in 128-op transactions, each watcher answering with
     a plain put; the writer follows the answers. No signatures, leases or JSON: the
     floor under a fleet-wide command when every agent talks to etcd.
  2. a fresh etcd again, a `hids-gateway` in front of it (--via gateway, the default;
     --via etcd: agents straight to etcd, as before issue 21), then `hids-sim --agents N`
     through it: registration time and rate, etcd/gateway/simulator RSS, etcd's own
     watcher and watch-stream counts, an idle spell (--idle-secs): etcd, gateway and
     simulator CPU and etcd's puts and transactions per second; then `hidsctl stop
     --all`, `hidsctl push --percent 10` (canary) and a push whose settings go to a
     large blob, each --runs times, with --wait: total time and per-agent latency from
     write to acknowledgement (p50/p99/max), and each process's CPU;
  3. resume: etcd stopped and started again on its data; the time from etcd answering
     to a `stop --all` acknowledged by every agent, and how many agent sessions ended
     (re-registrations) meanwhile; with a gateway, the gateway killed (-9) and started
     again: the time until it reports every agent again.
Medians over runs. Usage:

    sudo bench/fleet/run [--sizes 1000,10000,100000] [--runs 3] [--via gateway|etcd]
                         [--lease-ttl 60s] [--watch-streams own] [--blob-kb 32]
                         [--idle-secs 60] [--guard-interval 5s] [--only-idle]

--only-idle measures registration and the idle spell only (no operations, no
baseline, no resume): at 100,000 agents the whole benchmark takes most of an hour.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import TICK, Etcd, cpu_ticks, free_port, status_kb, stop_process, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "target", "release")
# The fleet settings (docs/control-plane.md, "etcd for the fleet"): an 8 GiB quota,
# snapshots every 100,000 entries, history compacted after an hour, and progress
# notifications every 5 s, so a gateway's watch resumes from a recent revision.
ETCD_FLAGS = ["--quota-backend-bytes", str(8 << 30), "--snapshot-count", "100000",
              "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h",
              "--experimental-watch-progress-notify-interval", "5s"]


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


def counter(etcd, *names):
    """An etcd counter (3.4 names some both ways; either will do)."""
    m = etcd.metrics()
    for name in names:
        if name in m:
            return m[name]
    return float("nan")


def puts(etcd):
    return counter(etcd, "etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total")


def txns(etcd):
    return counter(etcd, "etcd_mvcc_txn_total", "etcd_debugging_mvcc_txn_total")


class Fleet:
    """etcd, the gateway (or none) and the simulator of one size."""

    def __init__(self, tmp, n, args, keys):
        self.etcd = fresh_etcd(tmp)
        self.gateway = None
        self.args = args
        self.n = n
        self.report = ""
        endpoint = self.etcd.url
        if args.via == "gateway":
            self.gateway_port = free_port()
            self.start_gateway()
            endpoint = f"http://127.0.0.1:{self.gateway_port}"
        cmd = [os.path.join(BIN, "hids-sim"), "--endpoints", endpoint, "--agents", str(n),
               "--trusted-key", f"{keys}/signing.pub", "--lease-ttl", args.lease_ttl,
               "--watch-streams", args.watch_streams, "--guard-interval", args.guard_interval,
               "--report", "1s"]
        if args.connections:
            cmd += ["--connections", str(args.connections)]
        self.sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def start_gateway(self):
        self.gateway = subprocess.Popen(
            [os.path.join(BIN, "hids-gateway"), "--etcd", self.etcd.url,
             "--listen", f"127.0.0.1:{self.gateway_port}", "--report-interval", "1s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready(self):
        """Waits for READY; then keeps the simulator's last counters line."""
        line = self.sim.stdout.readline()
        while line.startswith("online="):
            line = self.sim.stdout.readline()
        if not line.startswith("READY"):
            raise SystemExit(f"hids-sim: {line!r}")

        def follow():
            for out in self.sim.stdout:
                if out.startswith("online="):
                    self.report = out
        threading.Thread(target=follow, daemon=True).start()
        return dict(kv.split("=", 1) for kv in line.split()[1:])

    def sim_counter(self, name):
        fields = dict(kv.split("=", 1) for kv in self.report.split() if "=" in kv)
        return int(fields.get(name, -1))

    def cpu(self):
        """CPU ticks of etcd, the gateway (0 without one) and the simulator."""
        gw = cpu_ticks(self.gateway.pid) if self.gateway else 0
        return cpu_ticks(self.etcd.proc.pid), gw, cpu_ticks(self.sim.pid)

    def stop(self):
        stop_process(self.sim, timeout=30)
        if self.gateway:
            stop_process(self.gateway)
        self.etcd.stop()


def idle(f, secs, res):
    """An idle spell: CPU of each process, and etcd's puts and transactions per second
    (status refreshes; nothing else writes while idle)."""
    c0, p0, t0 = f.cpu(), puts(f.etcd), txns(f.etcd)
    time.sleep(secs)
    c1 = f.cpu()
    res["idle_secs"] = secs
    res["idle_etcd_cpu_pct"], res["idle_gateway_cpu_pct"], res["idle_sim_cpu_pct"] = (
        (b - a) / TICK * 100 / secs for a, b in zip(c0, c1))
    res["idle_puts_per_sec"] = (puts(f.etcd) - p0) / secs
    res["idle_txns_per_sec"] = (txns(f.etcd) - t0) / secs


def hidsctl(url, args, key, timeout="300s"):
    started = time.monotonic()
    out = subprocess.run([os.path.join(BIN, "hidsctl"), "--endpoints", url] + args +
                         ["--key", key, "--wait", timeout, "--json"],
                         capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    try:
        res = json.loads(out.stdout)
    except json.JSONDecodeError:
        print(f"  hidsctl {args} failed: {out.stderr.strip()}", file=sys.stderr)
        return None
    res["wall_secs"] = wall
    return res


def gateway_report(f):
    out = subprocess.run([os.path.join(BIN, "hidsctl"), "--endpoints", f.etcd.url, "gateways", "--json"],
                         capture_output=True, text=True, timeout=120)
    try:
        return json.loads(out.stdout), out.returncode
    except json.JSONDecodeError:
        return None, out.returncode


def operations(tmp, f, args, keys):
    canary = os.path.join(tmp, "canary.toml")
    with open(canary, "w") as fh:
        fh.write('log_level = "debug"\n')
    blob = os.path.join(tmp, "blob.toml")
    with open(blob, "w") as fh:
        rules = ["rule-%06d" % i for i in range(args.blob_kb * 1024 // 14)]
        fh.write('[[plugins]]\nname = "process"\nargs = %s\n' % json.dumps(rules))
    key = f"{keys}/signing.key"
    ops = {"stop --all": ["stop", "--all"],
           "push --percent 10": ["push", "--percent", "10", "--file", canary],
           f"push --all ({args.blob_kb} KB blob)": ["push", "--all", "--file", blob]}
    results = {}
    for name, op in ops.items():
        runs = []
        for _ in range(args.runs):
            c0 = f.cpu()
            r = hidsctl(f.etcd.url, op, key)
            if r is None:
                continue
            c1 = f.cpu()
            r["etcd_cpu_secs"], r["gateway_cpu_secs"], r["sim_cpu_secs"] = (
                (b - a) / TICK for a, b in zip(c0, c1))
            runs.append(r)
            if r["acked"] != r["targets"]:
                print(f"  {name}: only {r['acked']}/{r['targets']} acknowledged", file=sys.stderr)
            time.sleep(2)
        results[name] = summarize_runs(runs)
    return results


def summarize_runs(runs):
    nan = float("nan")
    if not runs:
        return {"targets": 0, "acked_all": False, "elapsed_secs": nan, "p50_ms": nan, "p99_ms": nan,
                "max_ms": nan, "etcd_cpu_secs": nan, "gateway_cpu_secs": nan, "sim_cpu_secs": nan,
                "all_runs_secs": []}
    return {
        "targets": runs[0]["targets"],
        "acked_all": all(r["acked"] == r["targets"] for r in runs),
        "elapsed_secs": median([r["elapsed_secs"] for r in runs]),
        "p50_ms": median([r["ack_ms"]["p50"] for r in runs if r.get("ack_ms")]),
        "p99_ms": median([r["ack_ms"]["p99"] for r in runs if r.get("ack_ms")]),
        "max_ms": median([r["ack_ms"]["max"] for r in runs if r.get("ack_ms")]),
        "etcd_cpu_secs": median([r["etcd_cpu_secs"] for r in runs]),
        "gateway_cpu_secs": median([r["gateway_cpu_secs"] for r in runs]),
        "sim_cpu_secs": median([r["sim_cpu_secs"] for r in runs]),
        "all_runs_secs": [round(r["elapsed_secs"], 2) for r in runs],
    }


def resume(f, keys, res):
    """etcd restarted on its data: how long until every agent acknowledges again, and
    how many sessions ended meanwhile. Then (with a gateway) the gateway killed and
    started again: how long until it reports every agent."""
    ended0 = f.sim_counter("disconnects")
    down = time.monotonic()
    f.etcd.restart()
    back = time.monotonic()
    r = hidsctl(f.etcd.url, ["stop", "--all"], f"{keys}/signing.key", timeout="120s")
    res["resume_etcd_restart_secs"] = back - down
    res["resume_all_acked_secs"] = time.monotonic() - back if r and r["acked"] == f.n else float("nan")
    res["resume_stop_elapsed_secs"] = r["elapsed_secs"] if r else float("nan")
    time.sleep(2)
    res["resume_sessions_ended"] = f.sim_counter("disconnects") - ended0
    if not f.gateway:
        return
    before, _ = gateway_report(f)
    old_lease = before["gateways"][0]["lease"] if before and before["gateways"] else None
    f.gateway.kill()
    f.gateway.wait()
    started = time.monotonic()
    f.start_gateway()

    def all_back():
        summary, _ = gateway_report(f)
        return summary is not None and any(
            g["lease"] != old_lease and g["agents"] == f.n and g["keys_on_lease"] == f.n
            for g in summary["gateways"])

    try:
        wait_for("every agent on the restarted gateway", 300, all_back, every=1)
        res["reattach_secs"] = time.monotonic() - started
    except SystemExit:
        res["reattach_secs"] = float("nan")


def fleet(tmp, n, args, keys):
    f = Fleet(tmp, n, args, keys)
    try:
        e0 = cpu_ticks(f.etcd.proc.pid)
        fields = f.ready()
        res = {"agents": n, "via": args.via, "registration_secs": float(fields["registration_secs"]),
               "connections": int(fields["connections"]),
               "agent_task_bytes": int(fields.get("agent_task_bytes", 0)),
               "etcd_cpu_registration_secs": (cpu_ticks(f.etcd.proc.pid) - e0) / TICK}
        time.sleep(3)
        m = f.etcd.metrics()
        res["etcd_watchers"] = int(m.get("etcd_debugging_mvcc_watcher_total", -1))
        res["etcd_watch_streams"] = int(m.get("etcd_debugging_mvcc_watch_stream_total", -1))
        idle(f, args.idle_secs, res)
        res["etcd_rss_mb"] = status_kb(f.etcd.proc.pid, "VmRSS") / 1024
        res["gateway_rss_mb"] = status_kb(f.gateway.pid, "VmRSS") / 1024 if f.gateway else 0
        res["sim_rss_mb"] = status_kb(f.sim.pid, "VmRSS") / 1024
        res["sim_kb_per_agent"] = status_kb(f.sim.pid, "VmRSS") / n
        res["ops"] = {}
        if args.only_idle:
            return res
        res["ops"] = operations(tmp, f, args, keys)
        res["etcd_rss_after_mb"] = status_kb(f.etcd.proc.pid, "VmRSS") / 1024
        res["gateway_peak_rss_mb"] = status_kb(f.gateway.pid, "VmHWM") / 1024 if f.gateway else 0
        res["sim_peak_rss_mb"] = status_kb(f.sim.pid, "VmHWM") / 1024
        resume(f, keys, res)
        return res
    finally:
        f.stop()


def print_size(r, args):
    n = r["agents"]
    via = "1 gateway" if r["via"] == "gateway" else "etcd directly"
    print(f"\n## {n} agents via {via} ({r['connections']} connections)")
    print(f"registration {r['registration_secs']:.1f} s ({n / r['registration_secs']:.0f} agents/s; "
          f"etcd CPU {r['etcd_cpu_registration_secs']:.1f} s); etcd watchers {r['etcd_watchers']}, "
          f"watch streams {r['etcd_watch_streams']}; RSS etcd {r['etcd_rss_mb']:.0f} MB, gateway "
          f"{r['gateway_rss_mb']:.0f} MB, sim {r['sim_rss_mb']:.0f} MB ({r['sim_kb_per_agent']:.1f} KB/agent)")
    print(f"idle {r['idle_secs']} s: etcd {r['idle_puts_per_sec']:.1f} puts/s in {r['idle_txns_per_sec']:.1f} txns/s "
          f"(status refreshes); CPU etcd {r['idle_etcd_cpu_pct']:.1f}% gateway {r['idle_gateway_cpu_pct']:.1f}% "
          f"sim {r['idle_sim_cpu_pct']:.1f}% of a core")
    sys.stdout.flush()
    if args.only_idle:
        return
    b = r["baseline"]
    print(f"{'operation':32} {'targets':>8} {'all acked':>9} {'total s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'etcd cpu':>8} {'gw cpu':>8} {'sim cpu':>8}")
    for name, o in r["ops"].items():
        print(f"{name:32} {o['targets']:>8} {str(o['acked_all']):>9} {o['elapsed_secs']:>8.2f} "
              f"{o['p50_ms']:>8.0f} {o['p99_ms']:>8.0f} {o['max_ms']:>8.0f} {o['etcd_cpu_secs']:>8.1f} "
              f"{o['gateway_cpu_secs']:>8.1f} {o['sim_cpu_secs']:>8.1f}")
    print(f"{'baseline: plain etcd':32} {n:>8} {'True':>9} {b['elapsed_secs']:>8.2f} {b['p50_ms']:>8.0f} "
          f"{b['p99_ms']:>8.0f} {b['max_ms']:>8.0f}   (watchers set up in {b['setup_secs']:.1f} s, "
          f"etcd RSS {b['etcd_rss_mb']:.0f} MB)")
    stop = r["ops"]["stop --all"]["elapsed_secs"]
    print(f"stop --all / baseline: {stop / b['elapsed_secs']:.2f}x; after the runs: etcd RSS "
          f"{r['etcd_rss_after_mb']:.0f} MB, gateway peak {r['gateway_peak_rss_mb']:.0f} MB, "
          f"sim peak {r['sim_peak_rss_mb']:.0f} MB")
    print(f"resume after an etcd restart ({r['resume_etcd_restart_secs']:.1f} s down and up): every agent "
          f"acknowledged a stop {r['resume_all_acked_secs']:.1f} s after etcd answered (the stop itself "
          f"{r['resume_stop_elapsed_secs']:.1f} s); agent sessions ended: {r['resume_sessions_ended']}")
    if "reattach_secs" in r:
        print(f"gateway killed and restarted: every agent reported on it again after "
              f"{r['reattach_secs']:.1f} s ({n / r['reattach_secs']:.0f} agents/s)")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--via", choices=["gateway", "etcd"], default="gateway",
                    help="agents connect through one hids-gateway (default) or to etcd directly")
    ap.add_argument("--lease-ttl", default="60s",
                    help="hids-sim --lease-ttl: what the agents ask for (the agent's default; a gateway grants 600 s)")
    ap.add_argument("--watch-streams", default="own")
    ap.add_argument("--connections", type=int, default=0)
    ap.add_argument("--blob-kb", type=int, default=32)
    ap.add_argument("--idle-secs", type=int, default=60)
    ap.add_argument("--guard-interval", default="5s",
                    help="hids-sim --guard-interval: the guard's sampling period (the agent's default)")
    ap.add_argument("--only-idle", action="store_true",
                    help="registration and the idle spell only: no operations, no baseline, no resume")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hids-fleet-")
    keys = os.path.join(tmp, "keys")
    subprocess.run([os.path.join(BIN, "hidsctl"), "keygen", "--out", keys], check=True, stdout=subprocess.DEVNULL)
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"# {version}; flags {' '.join(ETCD_FLAGS)}; {os.cpu_count()} CPUs; agents via {args.via}; "
          f"lease TTL asked {args.lease_ttl}; watch streams {args.watch_streams}; runs {args.runs}")
    results = []
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            r = fleet(tmp, n, args, keys)
            results.append(r)
            if not args.only_idle:
                r["baseline"] = baseline(tmp, n, args.runs, r["connections"], args.watch_streams)
            print_size(r, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
