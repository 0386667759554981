#!/usr/bin/env python3
"""bench/alert-latency: the time from an exec on this host to its alert stored by
hids-server, with the real agent (process plugin, Kafka sink), tansu and hids-server
(SQLite) on this machine. Target: p99 < 2 s.

N attack commands run spaced --spacing seconds apart (default 1.2 s), each with a marker
of its own in its command line; the server's [alerts] window_secs is 1, so each makes
its own alert. Per alert the latency is `created_at - first_seen`: the server's clock
when it stored the alert minus the event time, which for a real agent is the kernel's
exec time. Beside it, from the same events: the agent's part (the Kafka message
timestamp, which librdkafka sets when the agent's sink hands it the event, minus the
exec time; tansu keeps that CreateTime) and the rest (Kafka, the server's batch and
its store: `created_at` minus the message timestamp). The agent's producer then waits
up to linger.ms = 20 before sending. The run is repeated for each --batch-wait-ms; an
entry `B:F` also sets the server's librdkafka fetch.wait.max.ms to F (through
`[kafka.librdkafka]`; librdkafka's default is 500).

Needs root (the process plugin). Usage:

    bench/alert-latency/run [--attacks 100] [--spacing 1.2] [--batch-wait-ms 100,10,10:50]
                            [--attack download|memory]

download: sh -c 'curl -fsS http://127.0.0.1:CLOSED/x.sh | sh; : MARKER'
          (hids-linux-download-piped-to-shell)
memory:   a copy of /bin/true in /dev/shm (hids-linux-exec-from-memory)
"""
import argparse
import calendar
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import HidsServer, Tansu, free_port, stop_process, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REL = os.path.join(ROOT, "target", "release")
RULES = {"download": "hids-linux-download-piped-to-shell", "memory": "hids-linux-exec-from-memory"}
TS = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def seconds(text):
    """An RFC 3339 time as float seconds since the epoch, to the microsecond."""
    m = TS.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    whole = calendar.timegm(tuple(int(x) for x in m.groups()[:6]))
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    zone = m.group(8)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        whole -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return whole + frac


def quantiles(values):
    """Nearest-rank p50, p90, p99 and the max, in ms."""
    s = sorted(values)
    if not s:
        return None
    rank = lambda q: s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))]  # noqa: E731
    return {"p50": rank(0.5) * 1e3, "p90": rank(0.9) * 1e3, "p99": rank(0.99) * 1e3, "max": s[-1] * 1e3,
            "count": len(s)}


def show(name, q, target=None):
    if q is None:
        print(f"{name:<44} no samples")
        return
    t = f"   (target p99 < {target} ms: {'met' if q['p99'] < target else 'MISSED'})" if target else ""
    print(f"{name:<44} {q['p50']:>8.1f} {q['p90']:>8.1f} {q['p99']:>8.1f} {q['max']:>8.1f} {q['count']:>6}{t}")


def start_agent(tmp, broker, topic, host):
    state = os.path.join(tmp, "agent-state")
    cfg = os.path.join(tmp, "agent.toml")
    with open(cfg, "w") as f:
        f.write(f'host_id = "{host}"\nstate_dir = "{state}"\nstatus_interval_secs = 1\nlog_level = "warn"\n'
                f'[labels]\nidc = "bench"\n'
                f'[[sinks]]\nkind = "kafka"\nbrokers = "{broker.addr}"\ntopic = "{topic}"\n')
    log = open(os.path.join(tmp, "agent.log"), "ab")
    agent = subprocess.Popen([f"{REL}/hids-agent", "--config", cfg], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=log)

    def capturing():
        if agent.poll() is not None:
            raise SystemExit(f"hids-agent exited ({agent.returncode}); see {tmp}/agent.log")
        try:
            with open(os.path.join(state, "status.json")) as f:
                st = json.load(f)
        except (OSError, ValueError):
            return False
        return any(p.get("name") == "process" and p.get("framed") for p in st.get("plugins", []))
    wait_for("the agent's process plugin to capture", 30, capturing)
    return agent


def attack_commands(kind, run_id, n, tmp):
    """(marker, argv) per attack; the marker is in the exec's command line."""
    closed = free_port()
    out = []
    for i in range(n):
        marker = f"hidsbench{run_id}x{i}"
        if kind == "download":
            out.append((marker, ["sh", "-c", f"curl -fsS http://127.0.0.1:{closed}/x.sh | sh; : {marker}"]))
        else:
            path = f"/dev/shm/{marker}"
            shutil.copy("/bin/true", path)
            os.chmod(path, 0o755)
            out.append((marker, [path]))
    return out


def run_attacks(commands, spacing):
    start = time.monotonic()
    for i, (_, argv) in enumerate(commands):
        delay = start + i * spacing - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    for _, argv in commands:
        if argv[0].startswith("/dev/shm/"):
            os.unlink(argv[0])


def measure(tmp, broker, topic, host, kind, n, spacing, variant):
    """One server run: the alerts of N attacks, by marker."""
    batch_wait_ms, _, fetch_wait_ms = variant.partition(":")
    name = variant.replace(":", "-")
    extra = f'[kafka.librdkafka]\n"fetch.wait.max.ms" = "{int(fetch_wait_ms)}"\n' if fetch_wait_ms else ""
    server = HidsServer(f"{REL}/hids-server", tmp, f"server-{name}",
                        f'log_level = "warn"\n[kafka]\nbrokers = ["{broker.addr}"]\ntopics = ["{topic}"]\n'
                        f'group = "latency-{name}"\nbatch_wait_ms = {int(batch_wait_ms)}\n{extra}'
                        f'[store]\npath = "{tmp}/alerts-{name}.db"\n[alerts]\nwindow_secs = 1\n')
    try:
        server.wait_ready()
        wait_for("the server to hold the partition", 60, lambda: (server.health() or {}).get("partitions", 0) >= 1)
        commands = attack_commands(kind, f"{name.replace('-', 'f')}r{int(time.time()) % 100000}", n, tmp)
        run_attacks(commands, spacing)
        markers = {m for m, _ in commands}
        query = f"/api/v1/alerts?host_id={host}&rule_id={RULES[kind]}&limit=1000"

        def found():
            by = {}
            for a in server.get(query):
                line = a.get("event", {}).get("process", {}).get("command_line", "")
                for m in re.findall(r"hidsbench\w+", line):
                    if m in markers:
                        by[m] = a
            return by
        alerts = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alerts = found()
            if len(alerts) == n:
                break
            time.sleep(0.5)
        return alerts, server.health()
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", type=int, default=100, help="attack commands per run (at most 1000)")
    ap.add_argument("--spacing", type=float, default=1.2, help="seconds between attacks (over 1)")
    ap.add_argument("--batch-wait-ms", default="100,10,10:50",
                    help="the server's batch_wait_ms, one run each; B:F also sets fetch.wait.max.ms = F")
    ap.add_argument("--attack", choices=sorted(RULES), default="download")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/alert-latency needs root: the agent's process plugin reads the kernel's process events")
    if not 1 <= args.attacks <= 1000 or args.spacing <= 1.0:
        sys.exit("--attacks 1..1000 and --spacing over 1 s (one alert per 1 s window)")
    waits = args.batch_wait_ms.split(",")
    tmp = tempfile.mkdtemp(prefix="hids-alert-latency-")
    broker = Tansu(tmp)
    agent = None
    try:
        topic, host = "events", f"bench-latency-{os.getpid()}"
        broker.create_topic(topic, 1)
        agent = start_agent(tmp, broker, topic, host)
        runs = []
        for bw in waits:
            alerts, health = measure(tmp, broker, topic, host, args.attack, args.attacks, args.spacing, bw)
            runs.append((bw, alerts, health))
        # The agent's events as they sit in Kafka, with the message timestamps.
        out = subprocess.run([f"{REL}/examples/bench_topic", "timestamps", broker.addr, topic],
                             check=True, capture_output=True, text=True, timeout=180).stdout
        sent = {}
        for line in out.splitlines():
            msg = json.loads(line)
            for m in re.findall(r"hidsbench\w+", msg["event"].get("process", {}).get("command_line", "")):
                sent.setdefault(m, msg)
        types = {m["kafka_ts_type"] for m in sent.values()}
        print(f"# alert-latency: {args.attacks} x {args.attack} ({RULES[args.attack]}) {args.spacing} s apart, "
              f"agent -> tansu -> hids-server (SQLite, window_secs 1) on {os.cpu_count()} CPUs; "
              f"Kafka timestamps: {','.join(sorted(types)) or 'none'}")
        print(f"{'latency, ms':<44} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'count':>6}")
        for bw, alerts, health in runs:
            total = [seconds(a["created_at"]) - seconds(a["first_seen"]) for a in alerts.values()]
            agent_part = [sent[m]["kafka_ms"] / 1e3 - seconds(sent[m]["event"]["@timestamp"])
                          for m in alerts if m in sent]
            rest = [seconds(a["created_at"]) - sent[m]["kafka_ms"] / 1e3 for m, a in alerts.items() if m in sent]
            bw, _, fw = bw.partition(":")
            fw = f", fetch.wait.max.ms = {fw}" if fw else ""
            print(f"batch_wait_ms = {bw}{fw}: {len(alerts)} of {args.attacks} alerts stored; server saw "
                  f"{health.get('events') if health else '?'} events")
            show("  exec -> alert stored (created_at-first_seen)", quantiles(total), 2000)
            show("  beside: exec -> agent's producer (Kafka ts)", quantiles(agent_part))
            show("  beside: Kafka ts -> alert stored", quantiles(rest))
    finally:
        if agent is not None:
            stop_process(agent)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
