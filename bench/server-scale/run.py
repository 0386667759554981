#!/usr/bin/env python3
"""bench/server-scale: events per second through the whole server path (consume,
decode, prefilter, rules, aggregation, PostgreSQL store, offset commit) with 1 instance
and with 2 instances in one consumer group, on one topic of 4 partitions; then a kill -9
of one of 2 instances mid-run, whose alerts must equal the 1-instance run's.

The topic is preloaded with M events of hids_detect::mix (ordinary administration with
~1% attacks, over many hosts, keyed by host id). Each run starts its instance(s) on a
fresh consumer group and a fresh database of one throwaway PostgreSQL cluster, and is
timed from the start of the processes until the sum of their /api/v1/health `events`
reaches M ("wall"; it includes joining the group), and from the first event consumed
("steady"). CPU seconds are user+system from /proc over the run: the hids-server
processes, tansu, and PostgreSQL (postmaster and backends); on a machine of few cores
they share them, which is what the columns show.

Kill run: instance A starts and takes every partition, then B joins; when B has
consumed some events and the sum is past M/3, B gets SIGKILL. (B, not A: tansu 0.6
cannot replace a dead group leader.) When A holds every partition and the group has
committed every offset of the topic, its alerts - (rule_id, host_id, window) and count -
are compared with the 1-instance run's: "lost 0, duplicated 0" or the differences.

Usage:

    bench/server-scale/run [--events 200000] [--hosts 1000] [--attacks-per-mille 10]
                           [--partitions 4] [--timeout 600] [--skip-kill]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import TICK, HidsServer, Postgres, Tansu, cpu_ticks, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REL = os.path.join(ROOT, "target", "release")
WINDOW_SECS = 3600


def server_config(broker, topic, group, url):
    return (f'log_level = "warn"\n[kafka]\nbrokers = ["{broker.addr}"]\ntopics = ["{topic}"]\ngroup = "{group}"\n'
            f'[store]\nurl = "{url}"\n[alerts]\nwindow_secs = {WINDOW_SECS}\n')


class Run:
    """Instances of one run and the CPU the run spends, process by process."""

    def __init__(self, tmp, broker, pg, topic, name):
        self.tmp, self.broker, self.pg, self.topic, self.name = tmp, broker, pg, topic, name
        self.cfg = server_config(broker, topic, f"group-{name}", pg.create_database(f"run_{name}"))
        self.servers = []
        self.cpu0 = (cpu_ticks(broker.proc.pid), pg.cpu_ticks())
        self.server_cpu = {}

    def start(self):
        s = HidsServer(f"{REL}/hids-server", self.tmp, f"{self.name}-{len(self.servers)}", self.cfg)
        self.servers.append(s)
        return s

    def healths(self):
        return [s.health() or {} for s in self.servers]

    def events(self):
        return sum(h.get("events", 0) for h in self.healths())

    def cpu(self):
        """CPU seconds so far: hids-server (each), tansu, postgres."""
        for s in self.servers:
            if s.proc.poll() is None:
                self.server_cpu[s.pid] = cpu_ticks(s.pid) / TICK
        return (sum(self.server_cpu.values()), [self.server_cpu.get(s.pid, 0.0) for s in self.servers],
                (cpu_ticks(self.broker.proc.pid) - self.cpu0[0]) / TICK, (self.pg.cpu_ticks() - self.cpu0[1]) / TICK)

    def stop(self):
        for s in self.servers:
            s.stop()


def timed(tmp, broker, pg, topic, instances, m, timeout):
    """Starts `instances` at once on a fresh group; events/s until their sum reaches M."""
    run = Run(tmp, broker, pg, topic, f"x{instances}")
    start = time.monotonic()
    try:
        for _ in range(instances):
            run.start()
        first = None
        while True:
            n = run.events()
            now = time.monotonic()
            if n > 0 and first is None:
                first = (now, n)
            if n >= m:
                break
            if now - start > timeout:
                raise SystemExit(f"{instances} instance(s): {n} of {m} events in {timeout} s; logs in {tmp}")
            time.sleep(0.25)
        cpu = run.cpu()
        alerts = alert_counts(run.servers[0])
        healths = run.healths()
        parts = [f'{h.get("events")} events/{h.get("partitions")} partitions' for h in healths]
        return {"wall": now - start, "steady": now - first[0], "steady_events": n - first[1], "cpu": cpu,
                "alerts": alerts, "partitions": parts, "events": n}
    finally:
        run.stop()


def alert_counts(server):
    """{(rule_id, host_id, window): count} of every alert in the store, host by host and
    rule by rule (the API lists at most 1,000 alerts per query)."""
    out = {}
    for host in server.get("/api/v1/alerts/summary?by=host_id&limit=10000"):
        for row in server.get(f"/api/v1/alerts/summary?by=rule_id&host_id={host['key']}&limit=10000"):
            alerts = server.get(f"/api/v1/alerts?rule_id={row['key']}&host_id={host['key']}&limit=1000")
            if len(alerts) >= 1000:
                raise SystemExit(f"host {host['key']} rule {row['key']}: 1,000 alerts or more; use fewer windows")
            for a in alerts:
                key = (a["rule_id"], a["host_id"], window_of(a["first_seen"]))
                if key in out:
                    out[key + ("copy",)] = out.get(key + ("copy",), 0) + a["count"]
                else:
                    out[key] = a["count"]
    return out


def window_of(rfc3339):
    import calendar
    day, clock = rfc3339.rstrip("Z").split("T")
    secs = calendar.timegm(tuple(int(x) for x in day.split("-")) + tuple(int(float(x)) for x in clock.split(":")))
    return secs // WINDOW_SECS


def kill_run(tmp, broker, pg, topic, partitions, m, timeout):
    run = Run(tmp, broker, pg, topic, "kill")
    try:
        a = run.start()
        a.wait_ready()
        wait_for("A to hold every partition", 60, lambda: (a.health() or {}).get("partitions") == partitions)
        b = run.start()
        start = time.monotonic()

        def b_working():
            hb, total = b.health() or {}, run.events()
            if total >= m:
                raise SystemExit("A consumed everything before B joined: use more --events")
            return hb.get("events", 0) > 0 and total >= m // 3
        wait_for("B to take part", timeout, b_working, 0.1)
        b_events = (b.health() or {}).get("events", 0)
        b.kill9()
        killed_at = run.events()
        while True:
            h = a.health() or {}
            if h.get("partitions") == partitions and group_lag(broker, topic, "group-kill") == 0:
                break
            if time.monotonic() - start > timeout:
                raise SystemExit(f"the survivor did not finish in {timeout} s: {h}; logs in {tmp}")
            time.sleep(0.5)
        last = h.get("events", 0)
        return {"b_events": b_events, "killed_at": killed_at, "a_events": last, "alerts": alert_counts(a)}
    finally:
        run.stop()


def group_lag(broker, topic, group):
    """Events of `topic` that `group` has not committed: 0 when every batch is stored."""
    out = subprocess.run([f"{REL}/examples/bench_topic", "group-lag", broker.addr, topic, group], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return int(out)


def compare(expected, got):
    lost = {k: v for k, v in expected.items() if k not in got}
    extra = {k: v for k, v in got.items() if k not in expected}
    fewer = {k: (expected[k], got[k]) for k in expected if k in got and got[k] < expected[k]}
    more = {k: (expected[k], got[k]) for k in expected if k in got and got[k] > expected[k]}
    return lost, extra, fewer, more


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="M, events preloaded (at most 5,000,000)")
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--attacks-per-mille", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per run")
    ap.add_argument("--skip-kill", action="store_true", help="no kill -9 run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/server-scale needs root: its PostgreSQL cluster runs as the postgres user")
    if not 1000 <= args.events <= 5_000_000:
        sys.exit("--events 1000..5000000")
    tmp = tempfile.mkdtemp(prefix="hids-server-scale-")
    broker = Tansu(tmp)
    pg = None
    try:
        pg = Postgres()
        topic = "events"
        broker.create_topic(topic, args.partitions)
        out = subprocess.run([f"{REL}/examples/bench_topic", "produce", broker.addr, topic, str(args.events),
                              str(args.hosts), str(args.attacks_per_mille)],
                             check=True, capture_output=True, text=True, timeout=args.timeout).stdout.strip()
        print(f"# server-scale: {args.events} events ({args.hosts} hosts, {args.attacks_per_mille}/1000 attacks) "
              f"preloaded ({out}) into {args.partitions} partitions of tansu (SQLite storage); "
              f"PostgreSQL store; {os.cpu_count()} CPUs")
        results = {}
        for n in (1, 2):
            results[n] = timed(tmp, broker, pg, topic, n, args.events, args.timeout)
        print(f"{'instances':<10} {'events/s wall':>13} {'events/s steady':>15} {'wall s':>7} "
              f"{'cpu s: server':>13} {'(each)':>12} {'tansu':>6} {'postgres':>8} {'alerts':>7}")
        for n, r in results.items():
            total, each, tansu, postgres = r["cpu"]
            print(f"{n:<10} {args.events / r['wall']:>13.0f} {r['steady_events'] / r['steady']:>15.0f} "
                  f"{r['wall']:>7.1f} {total:>13.1f} {'/'.join(f'{x:.1f}' for x in each):>12} {tansu:>6.1f} "
                  f"{postgres:>8.1f} {len(r['alerts']):>7}")
        print("instances' share: " + "; ".join(f"{n}: " + ", ".join(r["partitions"]) for n, r in results.items()))
        print(f"2 vs 1 instance: x{results[1]['wall'] / results[2]['wall']:.2f} (wall), "
              f"x{(results[2]['steady_events'] / results[2]['steady']) / (results[1]['steady_events'] / results[1]['steady']):.2f} (steady)")
        same = compare(results[1]["alerts"], results[2]["alerts"])
        print(f"2-instance alerts vs 1-instance: {'identical' if not any(same) else same}")
        if not args.skip_kill:
            k = kill_run(tmp, broker, pg, topic, args.partitions, args.events, args.timeout)
            lost, extra, fewer, more = compare(results[1]["alerts"], k["alerts"])
            print(f"kill -9: B killed after consuming {k['b_events']} events (sum {k['killed_at']} of "
                  f"{args.events}); survivor A consumed {k['a_events']}; {len(k['alerts'])} alerts vs "
                  f"{len(results[1]['alerts'])} of the 1-instance run")
            print(f"kill -9: lost {len(lost) + len(fewer)}, duplicated {len(extra) + len(more)}")
            by_rule = {}
            for d in (lost, fewer, extra, more):
                for key in d:
                    by_rule[key[0]] = by_rule.get(key[0], 0) + 1
            if by_rule:
                print("  differences by rule: " + ", ".join(
                    f"{r} {n} of {sum(1 for k in results[1]['alerts'] if k[0] == r)}" for r, n in sorted(by_rule.items())))
            for what, d in (("missing", lost), ("extra", extra), ("counted fewer", fewer), ("counted more", more)):
                for key, v in list(d.items())[:10]:
                    print(f"  {what}: {key} {v}")
    finally:
        broker.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
