#!/usr/bin/env python3
"""bench/exec-capture: how many execs of a storm each tool reports, with which args, at
what cost.

Tools: our agent with the eBPF backend, our agent with the proc connector backend,
forkstat (proc connector) and bpftrace's execsnoop.bt (eBPF). In each run the same storm
is replayed once per tool with only that tool attached, and once with none, so each
tool's cost to the exec'ing workload is its workload CPU minus the bare one. Printed per
tool: execs started, exec events seen, % captured, % with the correct full args, % with
a wrong command line, the tool's CPU seconds (per 10,000 execs), the workload's CPU per
10,000 execs, and the tool's peak RSS. Needs root. Usage:

    bench/exec-capture/run [--sizes 2000,20000] [--runs 3] [--program /bin/true|static]
                           [--tools hids-default,hids-ebpf,hids-cn_proc,forkstat,bpftrace] [--pidns host|new]

`--program static` runs a tiny static binary (built here with clang) that exits at its
first instruction: the hardest case for any capture that reads /proc afterwards.

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
import threading
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import TICK, cpu_ticks, status_kb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# HIDS_BIN_DIR: binaries built elsewhere (e.g. a copy of an earlier build, to compare).
AGENT = os.path.join(os.environ.get("HIDS_BIN_DIR") or os.path.join(ROOT, "target", "release"),
                     "hids-agent")
EXECSNOOP = "/usr/sbin/execsnoop.bt"
STATIC_SRC = "void _start(void) { __asm__ volatile(\"mov $60, %eax\\n xor %edi, %edi\\n syscall\"); }\n"


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


class Hids:
    """Our agent, standalone. `backend` ebpf or cn_proc: the process plugin alone with that
    backend; `default`: the agent's default configuration (no [[plugins]]: the built-in
    process, network and inventory plugins, process capture `auto`), all of them counted."""

    def __init__(self, backend, tmp):
        self.name = f"hids ({backend})"
        self.backend = backend
        self.tmp = tmp
        self.out_path = os.path.join(tmp, f"events-{backend}.jsonl")

    def start(self):
        state = os.path.join(self.tmp, f"state-{self.backend}")
        cfg = os.path.join(self.tmp, f"agent-{self.backend}.toml")
        with open(cfg, "w") as f:
            f.write(f'state_dir = "{state}"\nstatus_interval_secs = 1\nlog_level = "warn"\n')
            if self.backend != "default":
                f.write(f'[[plugins]]\nname = "process"\nargs = ["--capture", "{self.backend}"]\n')
        expected = 3 if self.backend == "default" else 1
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen([AGENT, "--config", cfg], stdout=self.out, stderr=subprocess.DEVNULL)

        def plugin_pids():
            try:
                with open(f"{state}/status.json") as f:
                    plugins = json.load(f)["plugins"]
                pids = [p["pid"] for p in plugins if p.get("framed") and p.get("pid")]
                return pids if len(pids) == expected else None
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                return None

        self.pids = [self.proc.pid] + wait_for(plugin_pids, 30, "the plugins")
        if self.backend == "default":
            time.sleep(10.0)  # the inventory plugin's first scan
        time.sleep(1.0)
        self.rest_kb = sum(status_kb(p, "VmRSS") for p in self.pids)
        self.rest_pss_kb = sum(pss_kb(p) for p in self.pids)

    def peak_kb(self):
        return sum(status_kb(p, "VmHWM") for p in self.pids)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.out.close()

    def score(self, tag, n, program, workers):
        expected = {f"storm-{tag}-{i}" for i in range(n)}
        seen = correct = wrong = 0
        self.located = 0
        with open(self.out_path, "rb") as f:
            for line in f:
                ev = json.loads(line)
                if ev["event"]["action"] != "exec":
                    continue
                if ev.get("process", {}).get("parent", {}).get("pid") not in workers:
                    continue
                seen += 1
                # The storm runs from this benchmark's working directory.
                if (ev["process"].get("working_directory") == os.getcwd()
                        and ev["process"].get("executable")):
                    self.located += 1
                args = ev["process"].get("args")
                if args is None:
                    continue  # reported, marked incomplete
                if len(args) == 2 and args[0] == program and args[1] in expected:
                    correct += 1
                else:
                    wrong += 1
        return seen, correct, wrong


class Forkstat:
    name = "forkstat"

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "forkstat.txt")

    def start(self):
        self.out = open(self.path, "wb")
        self.proc = subprocess.Popen(["forkstat", "-e", "fork,exec", "-l"], stdout=self.out,
                                     stderr=subprocess.DEVNULL)
        self.pids = [self.proc.pid]
        time.sleep(1.0)
        self.rest_kb = status_kb(self.proc.pid, "VmRSS")
        self.rest_pss_kb = pss_kb(self.proc.pid)

    def peak_kb(self):
        return status_kb(self.proc.pid, "VmHWM")

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        self.out.close()

    def score(self, tag, n, program, workers):
        expected = {f"storm-{tag}-{i}" for i in range(n)}
        children = set()
        seen = correct = wrong = 0
        prev_parent = None
        with open(self.path, errors="replace") as f:
            for line in f:
                parts = line.split(None, 4)
                if len(parts) < 4 or not parts[2].isdigit():
                    continue
                event, pid = parts[1], int(parts[2])
                if event == "fork":
                    if parts[3] == "parent":
                        prev_parent = pid
                    elif parts[3] == "child":
                        if prev_parent in workers:
                            children.add(pid)
                        prev_parent = None
                elif event == "exec" and pid in children:
                    seen += 1
                    want = line.split(None, 3)[3].strip().split(" ", 1)
                    if len(want) == 2 and want[0] == program and want[1] in expected:
                        correct += 1
                    else:
                        wrong += 1
        return seen, correct, wrong


class Execsnoop:
    name = "bpftrace execsnoop"

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "execsnoop.txt")

    def start(self):
        self.out = open(self.path, "wb")
        self.proc = subprocess.Popen(["bpftrace", EXECSNOOP], stdout=self.out, stderr=subprocess.DEVNULL)
        self.pids = [self.proc.pid]
        # bpftrace compiles and attaches before printing its header.
        wait_for(lambda: os.path.getsize(self.path) > 0, 60, "bpftrace to attach")
        time.sleep(0.5)
        self.rest_kb = status_kb(self.proc.pid, "VmRSS")
        self.rest_pss_kb = pss_kb(self.proc.pid)

    def peak_kb(self):
        return status_kb(self.proc.pid, "VmHWM")

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=20)
        self.out.close()

    def score(self, tag, n, program, workers):
        # execsnoop prints "TIME PID ARGS" at the syscall's entry and knows nothing of
        # parents: an exec line is ours when it names the storm's tag.
        expected = {f"storm-{tag}-{i}" for i in range(n)}
        seen = correct = wrong = 0
        with open(self.path, errors="replace") as f:
            for line in f:
                if f"storm-{tag}-" not in line or "storm-worker" in line:
                    continue
                seen += 1
                parts = line.split(None, 2)
                args = parts[2].split() if len(parts) == 3 else []
                if len(args) == 2 and args[0] == program and args[1] in expected:
                    correct += 1
                else:
                    wrong += 1
        return seen, correct, wrong


class Nothing:
    name = "(no tool)"
    pids = []
    rest_kb = 0
    rest_pss_kb = 0

    def start(self):
        pass

    def peak_kb(self):
        return 0

    def stop(self):
        pass

    def score(self, tag, n, program, workers):
        return 0, 0, 0


def storm(n, pidns, program, workers_count):
    tag = os.urandom(4).hex()
    cmd = [sys.executable, os.path.join(HERE, "storm.py"), tag, str(n), str(workers_count), program,
           "--wait-stdin"]
    if pidns:
        cmd = ["unshare", "--pid", "--fork", "--mount-proc"] + cmd
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        sys.exit("storm did not start")
    workers = wait_for(lambda: (lambda w: w if len(w) == workers_count else None)(workers_of(tag)), 5,
                       "storm workers")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out = proc.stdout.readline()
    proc.wait()
    m = re.search(r"started (\d+) in ([\d.]+) s, workload cpu ([\d.]+) s", out)
    if not m:
        sys.exit(f"storm said: {out!r}")
    return tag, workers, int(m.group(1)) / float(m.group(2)), float(m.group(3))


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PssSampler(threading.Thread):
    """Peak PSS of the tool's processes, sampled every 100 ms (there is no PSS high-water
    mark): pages shared with other processes (libc and the other libraries) count by share."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak_kb, self.done = pids, 0, threading.Event()

    def run(self):
        while not self.done.wait(0.1):
            self.peak_kb = max(self.peak_kb, sum(pss_kb(p) for p in self.pids))


def one_run(n, pidns, program, workers_count, tool):
    tool.start()
    before = sum(cpu_ticks(p) for p in tool.pids)
    sampler = PssSampler(tool.pids)
    sampler.start()
    tag, workers, rate, workload_cpu = storm(n, pidns, program, workers_count)
    time.sleep(2.0)  # let the tool drain what is queued
    cpu = (sum(cpu_ticks(p) for p in tool.pids) - before) / TICK
    peak = tool.peak_kb()
    sampler.done.set()
    sampler.join()
    tool.stop()
    seen, correct, wrong = tool.score(tag, n, program, workers)
    return dict(rate=rate, workload_cpu=workload_cpu, cpu_s=cpu, peak_kb=peak, rest_kb=tool.rest_kb,
                peak_pss_kb=sampler.peak_kb, rest_pss_kb=tool.rest_pss_kb,
                located=getattr(tool, "located", None), seen=seen, correct=correct, wrong=wrong)


def ensure_tracefs():
    if not os.path.exists("/sys/kernel/tracing/events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)


def build_static(tmp):
    src, exe = os.path.join(tmp, "exit0.c"), os.path.join(tmp, "exit0")
    with open(src, "w") as f:
        f.write(STATIC_SRC)
    subprocess.run(["clang", "-O2", "-static", "-nostdlib", "-o", exe, src], check=True)
    return exe


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pidns", choices=["host", "new"], default="host")
    ap.add_argument("--program", default="/bin/true", help="/bin/true, another path, or 'static'")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tools", default="hids-default,hids-ebpf,hids-cn_proc,forkstat,bpftrace")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: kernel process events and eBPF require it")
    if not os.path.exists(AGENT):
        sys.exit(f"{AGENT} missing: cargo build --release --workspace")
    ensure_tracefs()
    tmp = tempfile.mkdtemp(prefix="hids-bench-")
    os.chmod(tmp, 0o755)
    program = build_static(tmp) if args.program == "static" else args.program
    tools = [Nothing()]
    for t in args.tools.split(","):
        tools.append({"hids-ebpf": lambda: Hids("ebpf", tmp), "hids-default": lambda: Hids("default", tmp),
                      "hids-cn_proc": lambda: Hids("cn_proc", tmp),
                      "forkstat": lambda: Forkstat(tmp), "bpftrace": lambda: Execsnoop(tmp)}[t]())
    print(f"# exec-capture: {args.program} storms, {args.workers} workers, {args.pidns} pid ns, "
          f"median of {args.runs} runs, {os.cpu_count()} CPUs, kernel {os.uname().release}")
    print(f"{'N':>6} {'tool':<19} {'rate/s':>7} {'seen':>6} {'captured':>9} {'correct':>8} {'wrong':>6} "
          f"{'cpu s':>6} {'cpu s/10k':>9} {'workload s/10k':>14} {'peak RSS':>9} {'rest RSS':>9} "
          f"{'peak PSS':>9} {'rest PSS':>9} {'cwd+exe':>8}")
    for n in [int(x) for x in args.sizes.split(",")]:
        results = {t.name: [] for t in tools}
        for _ in range(args.runs):
            for t in tools:
                results[t.name].append(one_run(n, args.pidns == "new", program, args.workers, t))
        for t in tools:
            med = lambda k: statistics.median(r[k] for r in results[t.name])
            rest, rest_pss = med("rest_kb"), med("rest_pss_kb")
            located = [r["located"] for r in results[t.name] if r["located"] is not None]
            located = f"{100 * statistics.median(located) / n:.2f}%" if located else "-"
            print(f"{n:>6} {t.name:<19} {med('rate'):>7.0f} {med('seen'):>6.0f} "
                  f"{100 * med('seen') / n:>8.1f}% {100 * med('correct') / n:>7.2f}% "
                  f"{100 * med('wrong') / n:>5.1f}% {med('cpu_s'):>6.2f} {med('cpu_s') * 10000 / n:>9.2f} "
                  f"{med('workload_cpu') * 10000 / n:>14.2f} {med('peak_kb') / 1024:>7.1f}MB "
                  f"{(f'{rest / 1024:.1f}MB') if rest else '-':>9} {med('peak_pss_kb') / 1024:>7.1f}MB "
                  f"{(f'{rest_pss / 1024:.1f}MB') if rest_pss else '-':>9} {located:>8}", flush=True)
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
