"""Runs hids-plugin-inventory --once and dpkg-query -W on the same dpkg database; prints
CPU seconds (user + system, from wait4) and peak RSS of each, median of --runs."""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN = os.path.join(ROOT, "target", "release", "hids-plugin-inventory")


def grow_status(target, packages):
    """This host's status file, stanzas repeated under new names until `packages`."""
    with open("/var/lib/dpkg/status") as f:
        stanzas = [s for s in f.read().split("\n\n") if s.strip()]
    out, n = [], 0
    while n < packages:
        for s in stanzas:
            if n >= packages:
                break
            suffix = "" if n < len(stanzas) else f"-copy{n // len(stanzas)}"
            out.append(re.sub(r"^Package: (.*)$", lambda m: f"Package: {m.group(1)}{suffix}", s, flags=re.M))
            n += 1
    os.makedirs(os.path.join(target, "var/lib/dpkg"))
    os.makedirs(os.path.join(target, "etc"))
    with open(os.path.join(target, "var/lib/dpkg/status"), "w") as f:
        f.write("\n\n".join(out) + "\n")
    with open("/etc/os-release") as src, open(os.path.join(target, "etc/os-release"), "w") as dst:
        dst.write(src.read())
    return os.path.getsize(os.path.join(target, "var/lib/dpkg/status"))


def measure(argv):
    """CPU seconds and peak RSS (MB) of one run, and its output line count. GNU time
    measures: a child forked from this Python would count Python's own pages in its
    peak RSS."""
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", "/dev/stderr"] + argv,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.decode()[-500:]}")
    user, system, max_kb = proc.stderr.decode().strip().splitlines()[-1].split()
    lines = proc.stdout.count(b"\n")
    return float(user) + float(system), int(max_kb) / 1024, time.monotonic() - start, lines


def row(name, argv, runs):
    results = [measure(argv) for _ in range(runs)]
    cpu = statistics.median(r[0] for r in results)
    rss = max(r[1] for r in results)
    wall = statistics.median(r[2] for r in results)
    print(f"{name:<34} {cpu:>8.3f} {rss:>9.1f} {wall:>8.3f} {results[0][3]:>7}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size = grow_status(tmp, args.packages)
        print(f"dpkg database: {args.packages} packages, status file {size / 1e6:.1f} MB; median of {args.runs} runs")
        print(f"{'':<34} {'CPU s':>8} {'peak MB':>9} {'wall s':>8} {'lines':>7}")
        row("hids-plugin-inventory --once", [PLUGIN, "--once", "--root", tmp, "--nice", "0"], args.runs)
        row("dpkg-query -W (peer)", ["dpkg-query", f"--admindir={tmp}/var/lib/dpkg", "-W"], args.runs)
        row("hids-plugin-inventory --once (/)", [PLUGIN, "--once", "--nice", "0"], args.runs)
        row("dpkg-query -W (/)", ["dpkg-query", "-W"], args.runs)
    print("targets: < 2 CPU-seconds and < 30 MB peak for ~3,000 packages")


main()
