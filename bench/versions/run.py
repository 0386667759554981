#!/usr/bin/python3
"""bench/versions: disagreements between hids-vulns and dpkg / librpm on generated pairs.

The pairs and our answers come from `target/debug/examples/vercmp pairs FLAVOR N SEED`
(the generator of crates/vulns/tests/ordering.rs). For rpm, one python process asks
librpm (bench/versions/librpm_compare.py). For dpkg, one perl process asks
Dpkg::Version (libdpkg-perl) about every pair, and `dpkg --compare-versions` itself is
spawned for a random subset and for every pair the perl module cannot judge as dpkg's
C code does (a byte above 0x7f, a digit run over 15 digits). Prints the counts of disagreements
(target 0) and up to --examples of each.
"""
import argparse
import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# HIDS_BENCH_BIN=DIR takes vercmp from DIR (as the other benchmarks do).
VERCMP = os.path.join(os.environ.get("HIDS_BENCH_BIN") or os.path.join(ROOT, "target", "debug", "examples"), "vercmp")

PERL_COMPARE = r"""
use strict; use warnings;
use Dpkg::Version;
binmode STDIN; binmode STDOUT;
local $SIG{__WARN__} = sub {};
while (my $line = <STDIN>) {
    chomp $line;
    my ($a, $b) = split /\t/, $line, 2;
    # Objects built without `check`: version_compare() dies on what dpkg only warns about.
    print Dpkg::Version->new($a) <=> Dpkg::Version->new($b), "\n";
}
"""


def perl_can_judge(text):
    """Dpkg::Version weighs bytes above 0x7f differently from dpkg's C code, and
    compares digit runs as perl numbers (doubles: exact to 15 digits); those pairs go
    to dpkg itself."""
    return text.isascii() and max((len(run) for run in re.findall(r"[0-9]+", text)), default=0) <= 15


def generate(flavor, count, seed):
    out = subprocess.run([VERCMP, "pairs", flavor, str(count), str(seed)], check=True, stdout=subprocess.PIPE).stdout
    pairs = []
    for line in out.decode().splitlines():
        a, b, ours = line.split("\t")
        pairs.append((a, b, int(ours)))
    return pairs


def ask(command, pairs):
    """One process answers every pair, one -1/0/1 line each."""
    data = "".join(f"{a}\t{b}\n" for a, b, _ in pairs).encode()
    out = subprocess.run(command, input=data, check=True, stdout=subprocess.PIPE).stdout.decode().split()
    if len(out) != len(pairs):
        raise SystemExit(f"{command[0]} answered {len(out)} of {len(pairs)} pairs")
    return [(int(x) > 0) - (int(x) < 0) for x in out]


def dpkg_order(pair):
    a, b, _ = pair

    def relation(rel):
        code = subprocess.run(["dpkg", "--compare-versions", a, rel, b], stderr=subprocess.DEVNULL).returncode
        if code not in (0, 1):
            raise SystemExit(f"dpkg --compare-versions {a!r} {rel} {b!r} exited {code}")
        return code == 0
    return -1 if relation("lt") else 0 if relation("eq") else 1


def report(name, pairs, theirs, examples, seconds):
    bad = [(a, b, ours, t) for (a, b, ours), t in zip(pairs, theirs) if ours != t]
    print(f"{name}: {len(pairs)} pairs, {len(bad)} disagreements ({seconds:.1f} s)")
    for a, b, ours, t in bad[:examples]:
        print(f"    {a!r} vs {b!r}: hids-vulns {ours:+d}, {name} {t:+d}")
    spread = {o: sum(1 for _, _, x in pairs if x == o) for o in (-1, 0, 1)}
    print(f"    our answers: {spread[-1]} less, {spread[0]} equal, {spread[1]} greater")
    return len(bad)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--dpkg-pairs", type=int, default=10_000, help="subset spawned through dpkg itself")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="parallel dpkg spawns")
    args = parser.parse_args()
    total = 0

    rpm_pairs = generate("rpm", args.pairs, args.seed)
    start = time.monotonic()
    theirs = ask(["/usr/bin/python3", os.path.join(HERE, "librpm_compare.py")], rpm_pairs)
    total += report("librpm labelCompare", rpm_pairs, theirs, args.examples, time.monotonic() - start)

    deb_pairs = generate("deb", args.pairs, args.seed)
    start = time.monotonic()
    theirs = ask(["perl", "-e", PERL_COMPARE], deb_pairs)
    judged = [i for i, (a, b, _) in enumerate(deb_pairs) if perl_can_judge(a + b)]
    total += report("perl Dpkg::Version", [deb_pairs[i] for i in judged], [theirs[i] for i in judged],
                    args.examples, time.monotonic() - start)

    rng = random.Random(args.seed)
    chosen = set(rng.sample(range(len(deb_pairs)), min(args.dpkg_pairs, len(deb_pairs))))
    chosen |= {i for i, (a, b, _) in enumerate(deb_pairs) if not perl_can_judge(a + b)}
    subset = [deb_pairs[i] for i in sorted(chosen)]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        theirs = list(pool.map(dpkg_order, subset, chunksize=64))
    total += report("dpkg --compare-versions (subset + every pair perl cannot judge)", subset, theirs, args.examples,
                    time.monotonic() - start)
    print(f"total disagreements: {total}")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
