#!/usr/bin/env python3
"""bench/control-push: how fast N real agents apply a push, a stop and a resume.

Starts one etcd (loopback, fresh data dir) and N real hids-agent processes with no
plugins, waits until all are registered, then runs `hidsctl push --all --wait`,
`hidsctl stop --all --wait` and `hidsctl resume --all --wait`, each --runs times, and
prints the acknowledgement latency from each host's write to its acknowledgement
(p50/p99/max) and the total time. Usage:

    bench/control-push/run [--agents 1000] [--runs 3]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import Etcd, status_kb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "target", "release")






def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hids-push-")
    etcd = Etcd(tmp)
    url = etcd.url
    agents = []
    hidsctl = [os.path.join(BIN, "hidsctl"), "--endpoints", url]
    try:
        subprocess.run(hidsctl + ["keygen", "--out", f"{tmp}/keys"], check=True, stdout=subprocess.DEVNULL)
        start = time.monotonic()
        for i in range(args.agents):
            d = f"{tmp}/a{i}"
            os.makedirs(d)
            with open(f"{d}/agent.toml", "w") as f:
                f.write(f'host_id = "bench-{i:05d}"\nstate_dir = "{d}/state"\nstatus_interval_secs = 5\n'
                        f'log_level = "warn"\nplugins = []\n[labels]\nenv = "{"prod" if i % 2 else "staging"}"\n'
                        f'[control]\nendpoints = ["{url}"]\ntrusted_keys = ["{tmp}/keys/signing.pub"]\n')
            agents.append(subprocess.Popen([os.path.join(BIN, "hids-agent"), "--config", f"{d}/agent.toml"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while True:
            out = subprocess.run(hidsctl + ["agents", "--json"], capture_output=True, text=True)
            n = len(json.loads(out.stdout)) if out.returncode == 0 else 0
            if n == args.agents:
                break
            if time.monotonic() - start > 300:
                sys.exit(f"only {n} of {args.agents} agents registered")
            time.sleep(1)
        registered = time.monotonic() - start
        agent_rss = statistics.median(status_kb(a.pid, "VmRSS") for a in agents[:50])
        print(f"# control-push: {args.agents} real agents, etcd {url}, {os.cpu_count()} CPUs; "
              f"all registered in {registered:.1f} s; agent RSS median {agent_rss / 1024:.1f} MB; "
              f"etcd RSS {status_kb(etcd.proc.pid, 'VmRSS') / 1024:.0f} MB")
        with open(f"{tmp}/desired.toml", "w") as f:
            f.write('log_level = "warn"\n')
        print(f"{'action':<8} {'targets':>7} {'acked':>6} {'total s':>8} {'ack p50 ms':>10} {'ack p99 ms':>10} "
              f"{'ack max ms':>10}")
        for action in ["push", "stop", "resume"]:
            rows = []
            for _ in range(args.runs):
                cmd = hidsctl + [action, "--key", f"{tmp}/keys/signing.key", "--all", "--wait", "120s", "--json"]
                if action == "push":
                    cmd[len(hidsctl) + 1:len(hidsctl) + 1] = ["--file", f"{tmp}/desired.toml"]
                out = subprocess.run(cmd, capture_output=True, text=True)
                r = json.loads(out.stdout)
                rows.append(r)
                time.sleep(1)
            med = lambda f: statistics.median(f(r) for r in rows)
            print(f"{action:<8} {rows[0]['targets']:>7} {med(lambda r: r['acked']):>6.0f} "
                  f"{med(lambda r: r['elapsed_secs']):>8.2f} {med(lambda r: r['ack_ms']['p50']):>10.0f} "
                  f"{med(lambda r: r['ack_ms']['p99']):>10.0f} {med(lambda r: r['ack_ms']['max']):>10.0f}")
    finally:
        for a in agents:
            a.send_signal(signal.SIGTERM)
        for a in agents:
            try:
                a.wait(timeout=10)
            except subprocess.TimeoutExpired:
                a.kill()
        etcd.stop()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()

