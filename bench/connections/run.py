#!/usr/bin/env python3
"""bench/connections: what capturing connects and accepts costs at a steady rate of
loopback connections (issue 16's target: < 2% of one core for the plugin and the master
at 10,000 connections/s), our agent beside a peer, same load, same run.

The load is `hids-conn-load` (crates/test-support): one client process connects --rate
times a second for --secs seconds, holds each connection 50 ms and closes it with a
reset (no TIME_WAIT), and one server process accepts them and closes them. Two shapes:

  one    one client to one server port: one fold key per direction
  many   one client round-robin over --peers server ports: that many keys per direction

In each run the same load is replayed once per tool with only that tool attached:

  bare       nothing attached: the workload's own cost
  hids       hids-agent with only the network plugin (connect/accept events folded in
             the kernel per process, direction and peer, every 60 s), events to a file
  bpftrace   a bpftrace script on the same syscall-exit tracepoints printing one line
             per connection (pid, comm, and the destination a connect asked for), as
             bpftrace's tcpconnect.bt and tcpaccept.bt do with kprobes (this kernel has
             none)

Per tool: connections/s reached, the tool's CPU seconds during the load (utime + stime
of the tool and its children, from just before the load until 1 s after it) as % of one
core over the load's wall time, the tool's CPU at rest (% of one core over 5 s before
the load), the workload's CPU (client and server, from wait4) and its increase over the
bare run, events the tool wrote for the load's processes (and for hids the distinct fold
keys among them: one connect and one accept event per key is the ideal), the plugin's
counters (`live.reported`, `live.folded`, `live.ring_buffer_full` over the load) and
their sum against connects + accepts; for bpftrace its "Lost N events". Figures are
medians over --runs runs (the machine is shared: compare tools within one run). Needs
root.

    bench/connections/run [--rate 10000] [--secs 30] [--shape one|many|both] [--peers 256]
                          [--runs 3] [--tools hids,bpftrace] [--json]

Run it alone: flock /tmp/bench.lock bench/connections/run
"""
import argparse
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import TICK, stop_process, tree_cpu_ticks, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
AGENT = os.path.join(ROOT, "target", "release", "hids-agent")
LOAD = os.path.join(ROOT, "target", "release", "hids-conn-load")
IDLE_SECS = 5
DRAIN_SECS = 1.0
PEER_SCRIPT = r"""
tracepoint:syscalls:sys_enter_connect { @sa[tid] = args->uservaddr; }
tracepoint:syscalls:sys_exit_connect /@sa[tid]/ {
  if (args->ret == 0 || args->ret == -115) {
    $sa = (struct sockaddr_in *)uptr(@sa[tid]);
    printf("connect %d %s %s %d\n", pid, comm, ntop($sa->sin_addr.s_addr), bswap($sa->sin_port));
  }
  delete(@sa[tid]);
}
tracepoint:syscalls:sys_exit_accept /args->ret >= 0/ { printf("accept %d %s %d\n", pid, comm, args->ret); }
tracepoint:syscalls:sys_exit_accept4 /args->ret >= 0/ { printf("accept %d %s %d\n", pid, comm, args->ret); }
"""


def utc_now():
    """The agent's @timestamp format, so the two compare as strings."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Bare:
    name = "bare"
    pid = None

    def start(self):
        pass

    def stop(self):
        pass

    def score(self, load, started_at):
        return {}


class Hids:
    """hids-agent with only the network plugin, at its deployed settings except that no
    full snapshot runs (only on request) and the first listener scan is over before the
    load starts, so the window holds connect/accept capture alone."""
    name = "hids"

    def __init__(self, tmp):
        self.tmp = tmp

    def start(self):
        state = tempfile.mkdtemp(dir=self.tmp, prefix="state-")
        cfg = os.path.join(state, "agent.toml")
        with open(cfg, "w") as f:
            f.write(f'state_dir = "{state}"\nlog_level = "warn"\n[[plugins]]\nname = "network"\n'
                    'args = ["--snapshot-interval-secs", "0"]\n')
        self.events_path = os.path.join(state, "events.jsonl")
        self.out = open(self.events_path, "wb")
        self.log = open(os.path.join(state, "agent.log"), "wb")
        self.proc = subprocess.Popen([AGENT, "--config", cfg], stdout=self.out, stderr=self.log)
        self.pid = self.proc.pid
        # The first listener scan (within 10 s of the start) walks every descriptor: its
        # snapshot lines say it is done.
        wait_for("the network plugin's first listener scan", 30, self.first_scan_done, 0.2)
        time.sleep(1.0)

    def first_scan_done(self):
        if self.proc.poll() is not None:
            raise SystemExit(f"hids-agent exited ({self.proc.returncode}); see {self.log.name}")
        with open(self.events_path, "rb") as f:
            return b'"action":"listening"' in f.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.out.close()
        self.log.close()

    def score(self, load, started_at):
        pids = set(load["client_pids"]) | {load["server_pid"]}
        events = {"connect": 0, "accept": 0}
        keys, folded_in_events = set(), 0
        before, after = None, None
        with open(self.events_path, "rb") as f:
            for line in f:
                ev = json.loads(line)
                action, h = ev["event"]["action"], ev.get("hids", {})
                if action == "stats" and h.get("plugin") == "network":
                    live = h["stats"]["live"]
                    if ev["@timestamp"] <= started_at:
                        before = live
                    after = live
                elif action in events and ev.get("process", {}).get("pid") in pids:
                    events[action] += 1
                    folded_in_events += h.get("socket", {}).get("folded", 0)
                    # The fold key: (process, direction, peer); an accept's peer is the
                    # remote address and our port.
                    port = ev["destination"]["port"] if action == "connect" else ev["source"]["port"]
                    keys.add((ev["process"]["pid"], action, ev["destination"]["ip"], port))
        if not after or not after.get("enabled"):
            raise SystemExit(f"the network plugin's connect/accept probes are not attached: {after}")
        before = before or {}
        delta = {k: after[k] - before.get(k, 0) for k in ("reported", "folded", "ring_buffer_full", "malformed")}
        seen = delta["reported"] + delta["folded"]
        return dict(events=events["connect"] + events["accept"], connect_events=events["connect"],
                    accept_events=events["accept"], keys=len(keys), folded_in_events=folded_in_events,
                    live_reported=delta["reported"], live_folded=delta["folded"],
                    ring_buffer_full=delta["ring_buffer_full"], malformed=delta["malformed"],
                    seen_pct=100.0 * seen / max(1, load["connects"] + load["accepted"]))


class Bpftrace:
    name = "bpftrace"

    def __init__(self, tmp):
        self.script = os.path.join(tmp, "connections.bt")
        with open(self.script, "w") as f:
            f.write(PEER_SCRIPT)
        self.tmp = tmp

    def start(self):
        self.runs = getattr(self, "runs", 0) + 1
        self.path = os.path.join(self.tmp, f"bpftrace-{self.runs}.txt")
        self.out = open(self.path, "wb")
        self.err = open(self.path + ".err", "w+b")
        self.proc = subprocess.Popen(["bpftrace", self.script], stdout=self.out, stderr=self.err)
        self.pid = self.proc.pid
        # bpftrace compiles and attaches before printing its header.
        wait_for("bpftrace to attach", 60, lambda: os.path.getsize(self.path) > 0, 0.1)
        time.sleep(0.5)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        self.out.close()

    def score(self, load, started_at):
        pids = {str(p) for p in load["client_pids"]} | {str(load["server_pid"])}
        events = {"connect": 0, "accept": 0}
        with open(self.path, "rb") as f:
            for line in f:
                parts = line.split(None, 2)
                if len(parts) == 3 and parts[0].decode() in events and parts[1].decode() in pids:
                    events[parts[0].decode()] += 1
        self.err.seek(0)
        lost = sum(int(n) for n in re.findall(rb"Lost (\d+) events", self.err.read()))
        self.err.close()
        n = events["connect"] + events["accept"]
        return dict(events=n, connect_events=events["connect"], accept_events=events["accept"], lost=lost,
                    seen_pct=100.0 * n / max(1, load["connects"] + load["accepted"]))


def run_load(rate, secs, peers):
    proc = subprocess.Popen([LOAD, "--rate", str(rate), "--secs", str(secs), "--ports", str(peers)],
                            stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"hids-conn-load failed ({proc.returncode}): {out!r}")
    load = json.loads(out)
    # wait4 counts the server and its waited-for clients.
    load["workload_cpu_s"] = usage.ru_utime + usage.ru_stime
    return load


def one_run(tool, rate, secs, peers):
    tool.start()
    try:
        cpu = {}
        if tool.pid:
            at_rest = tree_cpu_ticks(tool.pid)
            time.sleep(IDLE_SECS)
            before = tree_cpu_ticks(tool.pid)
            cpu["idle_core_pct"] = 100.0 * (before - at_rest) / TICK / IDLE_SECS
        started_at = utc_now()
        load = run_load(rate, secs, peers)
        time.sleep(DRAIN_SECS)
        if tool.pid:
            cpu["cpu_s"] = (tree_cpu_ticks(tool.pid) - before) / TICK
            cpu["core_pct"] = 100.0 * cpu["cpu_s"] / load["wall_secs"]
    finally:
        tool.stop()
    r = dict(rate=load["rate"], connects=load["connects"], accepted=load["accepted"],
             connect_errors=load["connect_errors"], max_late_ms=load["max_late_ms"], wall_s=load["wall_secs"],
             workload_cpu_s=load["workload_cpu_s"], **cpu)
    r.update(tool.score(load, started_at))
    return r


def median(rows, key):
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def print_table(shape, peers, results, runs):
    keys = 1 if shape == "one" else peers
    print(f"\n## shape {shape}: 1 client, {keys} server port(s) ({keys} key(s) per direction)")
    print(f"{'tool':<9} {'conn/s':>7} {'tool cpu s':>10} {'% core':>7} {'idle %':>7} {'workload s':>10} "
          f"{'+workload':>9} {'events':>8} {'keys':>5} {'seen':>7} {'folded':>8} {'ring full':>9} {'lost':>6}")
    bare = median(results["bare"], "workload_cpu_s") if "bare" in results else None

    def cell(v, fmt, width):
        return f"{'-' if v is None else format(v, fmt):>{width}}"
    for name, rows in results.items():
        work = median(rows, "workload_cpu_s")
        extra = None if bare is None or name == "bare" else 100.0 * (work - bare) / bare
        print(f"{name:<9} {median(rows, 'rate'):>7.0f} {cell(median(rows, 'cpu_s'), '.2f', 10)} "
              f"{cell(median(rows, 'core_pct'), '.2f', 6)}% {cell(median(rows, 'idle_core_pct'), '.2f', 6)}% "
              f"{work:>10.2f} "
              f"{'-' if extra is None else f'{extra:+.1f}%':>9} {cell(median(rows, 'events'), '.0f', 8)} "
              f"{cell(median(rows, 'keys'), '.0f', 5)} "
              f"{cell(median(rows, 'seen_pct'), '.1f', 6)}% "
              f"{cell(median(rows, 'live_folded'), '.0f', 8)} {cell(median(rows, 'ring_buffer_full'), '.0f', 9)} "
              f"{cell(median(rows, 'lost'), '.0f', 6)}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10_000, help="connections per second")
    ap.add_argument("--secs", type=int, default=30, help="seconds of load per tool")
    ap.add_argument("--shape", choices=["one", "many", "both"], default="both")
    ap.add_argument("--peers", type=int, default=256, help="server ports of the 'many' shape")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tools", default="hids,bpftrace")
    ap.add_argument("--json", action="store_true", help="print every run's figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: eBPF tracepoints")
    for exe in (AGENT, LOAD):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: cargo build --release -p hids-agent -p hids-plugin-network "
                     "-p hids-test-support")
    if not os.path.exists("/sys/kernel/tracing/events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)
    tmp = tempfile.mkdtemp(prefix="hids-bench-conn-")
    tools = [Bare()]
    for t in args.tools.split(","):
        if t == "bpftrace" and subprocess.run(["which", "bpftrace"], capture_output=True).returncode != 0:
            print("# bpftrace is not installed (apt-get install bpftrace): left out", file=sys.stderr)
            continue
        tools.append({"hids": lambda: Hids(tmp), "bpftrace": lambda: Bpftrace(tmp)}[t]())
    shapes = ["one", "many"] if args.shape == "both" else [args.shape]
    if not args.json:
        print(f"# connections: {args.rate}/s for {args.secs} s per tool, median of {args.runs} runs, "
              f"{os.cpu_count()} CPUs, kernel {os.uname().release}")
    out = {"rate": args.rate, "secs": args.secs, "runs": args.runs, "shapes": {}}
    for shape in shapes:
        peers = 1 if shape == "one" else args.peers
        results = {t.name: [] for t in tools}
        for _ in range(args.runs):
            for t in tools:
                results[t.name].append(one_run(t, args.rate, args.secs, peers))
        medians = {name: {k: median(rows, k) for k in rows[0]} for name, rows in results.items()}
        out["shapes"][shape] = {"peers": peers, "median": medians, "runs": results}
        if not args.json:
            print_table(shape, args.peers, results, args.runs)
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
