#!/usr/bin/env python3
"""bench/exec-capture: how many execs of a storm each tool reports, and with which args.

Runs our agent (standalone, process plugin) and forkstat side by side on the same exec
storm, then prints, per tool: execs started, exec events seen, % captured, % with the
correct full args, % with a wrong command line, CPU seconds (and per 10,000 execs),
and peak RSS. Needs root. Usage:

    bench/exec-capture/run [--sizes 2000,20000] [--runs 3] [--pidns both|host|new]

Figures are medians over --runs runs; the machine is shared, so compare tools within
one run rather than across runs.
"""
import argparse
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
from common import TICK, cpu_ticks, free_port, status_kb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
AGENT = os.path.join(ROOT, "target", "release", "hids-agent")






def workers_of(tag):
    marker = f"storm-worker-{tag}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(int(name))
        except OSError:
            pass
    return set(found)


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def one_run(n, pidns, program, workers_count):
    tag = os.urandom(4).hex()
    tmp = tempfile.mkdtemp(prefix="hids-bench-")
    cfg = os.path.join(tmp, "agent.toml")
    with open(cfg, "w") as f:
        f.write(f'state_dir = "{tmp}/state"\nstatus_interval_secs = 1\nlog_level = "warn"\n')
    events_path = os.path.join(tmp, "events.jsonl")
    fs_path = os.path.join(tmp, "forkstat.txt")
    with open(events_path, "wb") as ev_out, open(fs_path, "wb") as fs_out:
        agent = subprocess.Popen([AGENT, "--config", cfg], stdout=ev_out, stderr=subprocess.DEVNULL)
        forkstat = subprocess.Popen(["forkstat", "-e", "fork,exec", "-l"], stdout=fs_out,
                                    stderr=subprocess.DEVNULL)

        def plugin_pid():
            try:
                with open(f"{tmp}/state/status.json") as f:
                    st = json.load(f)
                p = st["plugins"][0]
                return p["pid"] if p.get("framed") else None
            except (OSError, ValueError, KeyError, IndexError):
                return None

        ppid = wait_for(plugin_pid, 15, "the process plugin")
        time.sleep(1.0)
        rest_rss = status_kb(agent.pid, "VmRSS") + status_kb(ppid, "VmRSS")
        ours = [agent.pid, ppid]
        before = {"hids": sum(cpu_ticks(p) for p in ours), "forkstat": cpu_ticks(forkstat.pid)}

        cmd = [sys.executable, os.path.join(HERE, "storm.py"), tag, str(n), str(workers_count), program,
               "--wait-stdin"]
        if pidns:
            cmd = ["unshare", "--pid", "--fork", "--mount-proc"] + cmd
        storm = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if storm.stdout.readline().strip() != "ready":
            sys.exit("storm did not start")
        workers = wait_for(lambda: (lambda w: w if len(w) == workers_count else None)(workers_of(tag)), 5,
                           "storm workers")
        storm.stdin.write("go\n")
        storm.stdin.flush()
        out = storm.stdout.readline()
        storm.wait()
        m = re.search(r"started (\d+) in ([\d.]+) s", out)
        rate = int(m.group(1)) / float(m.group(2)) if m else 0.0
        # Let both tools drain what is queued.
        time.sleep(2.0)
        after = {"hids": sum(cpu_ticks(p) for p in ours), "forkstat": cpu_ticks(forkstat.pid)}
        peak = {"hids": status_kb(agent.pid, "VmHWM") + status_kb(ppid, "VmHWM"),
                "forkstat": status_kb(forkstat.pid, "VmHWM")}
        agent.send_signal(signal.SIGTERM)
        forkstat.send_signal(signal.SIGINT)
        agent.wait(timeout=10)
        forkstat.wait(timeout=10)

    expected = {f"storm-{tag}-{i}" for i in range(n)}
    results = {}

    # Ours: exec events whose parent is a storm worker.
    seen = correct = wrong = incomplete = 0
    with open(events_path, "rb") as f:
        for line in f:
            ev = json.loads(line)
            if ev["event"]["action"] != "exec":
                continue
            if ev.get("process", {}).get("parent", {}).get("pid") not in workers:
                continue
            seen += 1
            args = ev["process"].get("args")
            if args is None:
                incomplete += 1
            elif len(args) == 2 and args[0] == program and args[1] in expected:
                correct += 1
            else:
                wrong += 1
    results["hids (cn_proc)"] = dict(seen=seen, correct=correct, wrong=wrong)

    # forkstat: children forked by a worker, then their exec lines.
    children = set()
    seen = correct = wrong = 0
    prev_parent = None
    with open(fs_path, errors="replace") as f:
        for line in f:
            parts = line.split(None, 4)
            if len(parts) < 4:
                continue
            event, pid = parts[1], parts[2]
            if not pid.isdigit():
                continue
            pid = int(pid)
            if event == "fork":
                if parts[3] == "parent":
                    prev_parent = pid
                elif parts[3] == "child":
                    if prev_parent in workers:
                        children.add(pid)
                    prev_parent = None
            elif event == "exec" and pid in children:
                seen += 1
                proc = line.split(None, 3)[3].strip()
                want = proc.split(" ", 1)
                if len(want) == 2 and want[0] == program and want[1] in expected:
                    correct += 1
                else:
                    wrong += 1
    results["forkstat"] = dict(seen=seen, correct=correct, wrong=wrong)

    for name, key in (("hids (cn_proc)", "hids"), ("forkstat", "forkstat")):
        results[name]["cpu_s"] = (after[key] - before[key]) / TICK
        results[name]["peak_kb"] = peak[key]
    results["hids (cn_proc)"]["rest_kb"] = rest_rss
    results["hids (cn_proc)"]["incomplete"] = incomplete
    subprocess.run(["rm", "-rf", tmp])
    return rate, results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pidns", choices=["both", "host", "new"], default="both")
    ap.add_argument("--program", default="/bin/true")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: the proc connector requires CAP_NET_ADMIN")
    if not os.path.exists(AGENT):
        sys.exit(f"{AGENT} missing: cargo build --release --workspace")
    modes = {"both": [False, True], "host": [False], "new": [True]}[args.pidns]
    print(f"# exec-capture: {args.program} storms, {args.workers} workers, median of {args.runs} runs, "
          f"{os.cpu_count()} CPUs, kernel {os.uname().release}")
    header = (f"{'N':>6} {'pid ns':<7} {'rate/s':>7}  {'tool':<15} {'seen':>6} {'captured':>9} "
              f"{'correct':>8} {'wrong':>6} {'cpu s':>6} {'cpu s/10k':>9} {'peak RSS':>9} {'rest RSS':>9}")
    print(header)
    for n in [int(x) for x in args.sizes.split(",")]:
        for pidns in modes:
            runs = [one_run(n, pidns, args.program, args.workers) for _ in range(args.runs)]
            rate = statistics.median(r for r, _ in runs)
            for tool in runs[0][1]:
                med = lambda k: statistics.median(r[tool].get(k, 0) for _, r in runs)
                cpu = med("cpu_s")
                rest = med("rest_kb")
                print(f"{n:>6} {'new' if pidns else 'host':<7} {rate:>7.0f}  {tool:<15} {med('seen'):>6.0f} "
                      f"{100 * med('seen') / n:>8.1f}% {100 * med('correct') / n:>7.1f}% "
                      f"{100 * med('wrong') / n:>5.1f}% {cpu:>6.2f} {cpu * 10000 / n:>9.2f} "
                      f"{med('peak_kb') / 1024:>7.1f}MB {(f'{rest / 1024:.1f}MB') if rest else '-':>9}")


if __name__ == "__main__":
    main()

