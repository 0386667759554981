#!/usr/bin/env python3
"""bench/sockets: a full socket snapshot with owners at 10k, 100k and 300k loopback TCP
sockets, our plugin beside the field's tools, same farm, same run.

The farm is `hids-socket-farm` (crates/test-support): N connections (2N sockets) held by
a few processes, each of which reports what it holds. Measured on each farm:

  hids-bpf_iter    hids-plugin-network --once --snapshot-method bpf_iter
  hids-sock_diag   hids-plugin-network --once --snapshot-method sock_diag (the fallback)
  hids-listeners   hids-plugin-network --once --listeners-only (when the plugin has it)
  ss-tan           ss -tan: no owners, the yardstick
  ss-tanp          ss -tanp: with owners, run once, cut off after --budget-secs
  proc-walk        a plain /proc/*/fd walk joined with /proc/net/tcp{,6} (Python; the
                   netstat -p algorithm), an independent peer and the ground truth

Per tool: wall seconds, CPU seconds (user + system) and peak RSS of the process (from
GNU time), lines printed, and for our plugin the owner agreement: the share of the farm's
sockets (by 4-tuple, owners as the farm's processes report them) that have exactly one
line naming the right pid, and the share of the farm's sockets as the /proc walk sees
them (by inode) whose line names a pid the walk found holding that inode. Figures are
medians over --runs runs (ss -tanp: one run; agreement: the worst run). Needs root.

    bench/sockets/run [--sizes 10000,100000,300000] [--runs 3] [--budget-secs 60]
                      [--tools hids-bpf_iter,hids-sock_diag,hids-listeners,ss-tan,ss-tanp,proc-walk]
                      [--json]

Sizes count sockets (2 per connection). Run it alone: flock /tmp/bench.lock bench/sockets/run
"""
import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLUGIN = os.path.join(ROOT, "target", "release", "hids-plugin-network")
FARM = os.path.join(ROOT, "target", "release", "hids-socket-farm")
ALL_TOOLS = "hids-bpf_iter,hids-sock_diag,hids-listeners,ss-tan,ss-tanp,proc-walk"
TCP_STATES = {1: "established", 10: "listen"}


# ---- the farm ----

class Farm:
    """hids-socket-farm holding `connections` connections; its ground truth as
    {(transport, local_ip, local_port, peer_ip, peer_port): (pid, state)}."""

    def __init__(self, connections, tmp):
        self.ready = os.path.join(tmp, f"truth-{connections}.tsv")
        self.log = open(os.path.join(tmp, f"farm-{connections}.log"), "w+b")
        start = time.monotonic()
        # Its own session and group, killed as one; it also exits when our end of its
        # stdin closes, so a crashed benchmark leaves nothing behind.
        self.proc = subprocess.Popen([FARM, "--connections", str(connections), "--ready-file", self.ready,
                                      "--exit-on-stdin-eof"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self.log, start_new_session=True)
        deadline = start + 60 + connections / 2000
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                self.log.seek(0)
                raise SystemExit(f"the socket farm failed ({connections} connections): "
                                 f"{self.log.read().decode(errors='replace')}")
            time.sleep(0.05)
        self.setup_secs = time.monotonic() - start
        self.truth = {}
        with open(self.ready) as f:
            for line in f:
                if line.startswith("#"):
                    continue
                pid, transport, state, lip, lport, pip, pport = line.split()
                peer = (None, None) if pip == "-" else (pip, int(pport))
                self.truth[(transport, lip, int(lport)) + peer] = (int(pid), state)
        self.pids = {pid for pid, _ in self.truth.values()}

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        # The workers are reparented and reaped elsewhere: wait until their sockets go.
        end = time.monotonic() + 30
        while time.monotonic() < end and group_alive(self.proc.pid):
            time.sleep(0.1)
        self.log.close()


def group_alive(pgid):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != b"Z":
                    return True
            except (OSError, IndexError, ValueError):
                pass
    return False


# ---- the plain /proc walk (run as a child of this script, so its cost is its own) ----

def hex_ip(h):
    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # Four host-order (little-endian) 32-bit words.
    return socket.inet_ntop(socket.AF_INET6, b"".join(struct.pack(">I", w) for w in struct.unpack("<4I", raw)))


def proc_walk(out_path):
    """Every process's fds (inode -> pids), then /proc/net/tcp{,6} for the 4-tuples:
    one line per TCP socket, `pids state local_ip local_port peer_ip peer_port inode`."""
    owners = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), set()).add(int(entry))
    with open(out_path, "w") as out:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, peer, state, inode = fields[1], fields[2], int(fields[3], 16), int(fields[9])
                    lip, lport = local.split(":")
                    pip, pport = peer.split(":")
                    pids = ",".join(map(str, sorted(owners.get(inode, ())))) or "-"
                    out.write(f"{pids} {TCP_STATES.get(state, state)} {hex_ip(lip)} {int(lport, 16)} "
                              f"{hex_ip(pip)} {int(pport, 16)} {inode}\n")


# ---- measuring one tool ----

def measure(argv, out_path, budget=None):
    """Runs argv with stdout to out_path, under GNU time for its CPU and peak RSS (wait4
    from this Python process would count the parent's pages the child had before exec).
    With a budget, kills the tool when it runs out and says so."""
    time_path = out_path + ".time"
    with open(out_path, "wb") as out, open(out_path + ".err", "wb") as err:
        start = time.monotonic()
        p = subprocess.Popen(["/usr/bin/time", "-f", "%U %S %M", "-o", time_path] + argv, stdout=out, stderr=err)
        finished = True
        try:
            p.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            finished = False
            for child in children(p.pid):
                os.kill(child, signal.SIGKILL)
            p.wait()
        wall = time.monotonic() - start
    if finished and p.returncode != 0:
        with open(out_path + ".err", "rb") as f:
            raise SystemExit(f"{' '.join(argv)} exited {p.returncode}: {f.read().decode(errors='replace')[-2000:]}")
    with open(time_path) as f:
        # After a kill, GNU time says so on a line of its own before the figures.
        user, system, rss_kb = f.read().split("\n")[-2].split()
    with open(out_path, "rb") as f:
        lines = sum(1 for _ in f)
    return {"wall": wall, "cpu": float(user) + float(system), "rss_mb": int(rss_kb) / 1024,
            "lines": lines, "finished": finished}


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


# ---- agreement ----

def plugin_rows(path):
    """Our output: socket rows and the stats record."""
    rows, stats = [], None
    with open(path, "rb") as f:
        for line in f:
            ev = json.loads(line)
            if ev.get("event", {}).get("action") == "stats":
                stats = ev
            elif "source" in ev:
                rows.append(ev)
    return rows, stats


def ep(v):
    return (v["ip"], v["port"]) if v and v.get("port") is not None else (None, None)


def farm_agreement(rows, farm, listeners_only=False):
    """% of the farm's sockets (by 4-tuple) with exactly one line naming the right pid
    and the right action."""
    seen = {}
    for ev in rows:
        transport = ev.get("network", {}).get("transport")
        peer = ep(ev.get("destination"))
        if peer[1] == 0:
            peer = (None, None)
        key = (transport,) + ep(ev["source"]) + peer
        if key in farm.truth:
            pid, state = farm.truth[key]
            action = "connection" if state == "established" else "listening"
            ok = ev.get("process", {}).get("pid") == pid and ev["event"]["action"] == action
            seen.setdefault(key, []).append(ok)
    want = [k for k, (_, state) in farm.truth.items() if not listeners_only or state != "established"]
    right = sum(1 for k in want if seen.get(k) == [True])
    return 100.0 * right / max(1, len(want))


def proc_agreement(rows, walk_path, farm):
    """% of the farm's TCP sockets as the /proc walk sees them (by inode) whose line
    names a pid the walk found holding that inode."""
    walk = {}
    with open(walk_path) as f:
        for line in f:
            pids, _state, *_rest, inode = line.split()
            if pids != "-":
                pids = {int(p) for p in pids.split(",")}
                if pids & farm.pids:
                    walk[int(inode)] = pids
    by_inode = {}
    for ev in rows:
        inode = ev.get("hids", {}).get("socket", {}).get("inode")
        if inode in walk:
            by_inode.setdefault(inode, []).append(ev.get("process", {}).get("pid"))
    right = sum(1 for inode, pids in walk.items() if len(by_inode.get(inode, ())) == 1 and by_inode[inode][0] in pids)
    return 100.0 * right / max(1, len(walk))


# ---- one farm size ----

def has_listeners_only():
    out = subprocess.run([PLUGIN, "--help"], capture_output=True, text=True)
    return "--listeners-only" in out.stdout


def commands(tools, listeners_flag):
    cmds = {
        "hids-bpf_iter": [PLUGIN, "--once", "--snapshot-method", "bpf_iter", "--log-level", "warn"],
        "hids-sock_diag": [PLUGIN, "--once", "--snapshot-method", "sock_diag", "--log-level", "warn"],
        "hids-listeners": [PLUGIN, "--once", "--listeners-only", "--log-level", "warn"],
        "ss-tan": ["ss", "-tan"],
        "ss-tanp": ["ss", "-tanp"],
        "proc-walk": [sys.executable, os.path.abspath(__file__), "--proc-walk"],
    }
    return {t: cmds[t] for t in tools if t != "hids-listeners" or listeners_flag}


def one_size(sockets, args, tmp, tools):
    farm = Farm(sockets // 2, tmp)
    try:
        cmds = commands(tools, "hids-listeners" in tools and has_listeners_only())
        runs = {t: [] for t in cmds}
        for r in range(args.runs):
            for tool, argv in cmds.items():
                if tool == "ss-tanp" and r > 0:
                    continue
                out = os.path.join(tmp, f"{tool}-{sockets}-{r}.out")
                argv = argv + [out] if tool == "proc-walk" else argv
                budget = args.budget_secs if tool == "ss-tanp" else None
                m = measure(argv, out, budget)
                runs[tool].append((m, out))
        walk_out = runs["proc-walk"][0][1] if "proc-walk" in runs else None
        results = {}
        for tool, ms in runs.items():
            figures = [m for m, _ in ms]
            if tool.startswith("hids-"):
                for m, out in ms:
                    rows, stats = plugin_rows(out)
                    m["farm_agree"] = farm_agreement(rows, farm, tool == "hids-listeners")
                    if walk_out and tool != "hids-listeners":
                        m["proc_agree"] = proc_agreement(rows, walk_out, farm)
                    m["method"] = (((stats or {}).get("hids", {}).get("stats", {}).get("snapshot") or {})
                                   .get("method"))
            results[tool] = figures
        return {"sockets": sockets, "connections": sockets // 2, "farm_processes": len(farm.pids),
                "farm_sockets": len(farm.truth), "farm_setup_secs": farm.setup_secs, "tools": results}
    finally:
        farm.stop()
        for name in os.listdir(tmp):
            if name.endswith(".out") or name.endswith(".err"):
                os.unlink(os.path.join(tmp, name))


def print_table(result):
    print(f"\n## {result['sockets']:,} sockets ({result['connections']:,} connections in "
          f"{result['farm_processes']} processes, farm ready in {result['farm_setup_secs']:.1f} s)")
    print(f"{'tool':<15} {'wall s':>8} {'cpu s':>7} {'RSS MB':>7} {'lines':>8} {'farm ok %':>10} "
          f"{'/proc ok %':>10}  note")
    for tool, ms in result["tools"].items():
        def med(k):
            return statistics.median(m[k] for m in ms)

        def worst(k):
            vals = [m[k] for m in ms if k in m]
            return f"{min(vals):10.3f}" if vals else f"{'-':>10}"
        note = ""
        if not all(m["finished"] for m in ms):
            note = f"did not finish in budget, {int(med('lines')):,} lines"
        elif ms and ms[0].get("method"):
            note = f"method {ms[0]['method']}"
        if len(ms) > 1:
            note = (note + f"; median of {len(ms)}").lstrip("; ")
        print(f"{tool:<15} {med('wall'):8.3f} {med('cpu'):7.2f} {med('rss_mb'):7.1f} {int(med('lines')):8d} "
              f"{worst('farm_agree')} {worst('proc_agree')}  {note}")


def parse_size(s):
    s = s.strip().lower()
    mult = 1000 if s.endswith("k") else 1
    return int(float(s.rstrip("k")) * mult)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--proc-walk":
        proc_walk(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,300000", help="sockets (2 per connection); 10k style works")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--budget-secs", type=float, default=60)
    ap.add_argument("--tools", default=ALL_TOOLS)
    ap.add_argument("--json", action="store_true", help="print the raw figures of every run as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/sockets needs root (the BPF iterator, every process's fds)")
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(ALL_TOOLS.split(","))
    if unknown:
        raise SystemExit(f"unknown tools {sorted(unknown)}; choose from {ALL_TOOLS}")
    for path in [FARM] + [PLUGIN] * any(t.startswith("hids-") for t in tools):
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: cargo build --release -p hids-plugin-network -p hids-test-support")
    results = []
    with tempfile.TemporaryDirectory(prefix="hids-bench-sockets-") as tmp:
        for size in map(parse_size, args.sizes.split(",")):
            result = one_size(size, args, tmp, tools)
            results.append(result)
            if not args.json:
                print_table(result)
                sys.stdout.flush()
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
