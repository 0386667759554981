#!/usr/bin/env python3
"""bench/pipeline: events per second from a plugin through the agent into Kafka, beside
a plain librdkafka producer sending the same kind of JSON lines with the same settings
(lz4, acks=all, linger 20 ms, one request in flight), to the same broker, in the same run.

For the agent: the synthetic plugin emits N events as fast as the pipe takes them; the
time runs from the agent's start until its status reports N+1 events acknowledged by
Kafka (status written every second: +/- 1 s). CPU is user+system of the agent and its
plugin; RSS is VmHWM of both. Usage:

    bench/pipeline/run [--events 200000] [--runs 3]
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
from common import TICK, cpu_ticks, free_port, status_kb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REL = os.path.join(ROOT, "target", "release")








def run_agent(tmp, port, topic, n):
    cfg = f"{tmp}/agent-{topic}.toml"
    with open(cfg, "w") as f:
        f.write(f'state_dir = "{tmp}/state-{topic}"\nstatus_interval_secs = 1\nlog_level = "warn"\n'
                f'[[sinks]]\nkind = "kafka"\nbrokers = "127.0.0.1:{port}"\ntopic = "{topic}"\n'
                f'[[plugins]]\nname = "synthetic"\npath = "{REL}/hids-plugin-synthetic"\n'
                f'args = ["--count", "{n}", "--pad", "200"]\n')
    start = time.monotonic()
    agent = subprocess.Popen([f"{REL}/hids-agent", "--config", cfg], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    status = f"{tmp}/state-{topic}/status.json"
    plugin_pid = None
    while True:
        time.sleep(0.2)
        try:
            with open(status) as f:
                st = json.load(f)
        except (OSError, ValueError):
            continue
        plugin_pid = st["plugins"][0].get("pid") or plugin_pid
        if st["pipeline"]["kafka_delivered"] >= n + 1:
            break
        if time.monotonic() - start > 600:
            sys.exit("agent did not deliver in 600 s")
    elapsed = time.monotonic() - start
    cpu = (cpu_ticks(agent.pid) / TICK) + ((cpu_ticks(plugin_pid) / TICK) if plugin_pid else 0)
    rss = status_kb(agent.pid, "VmHWM") + (status_kb(plugin_pid, "VmHWM") if plugin_pid else 0)
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=20)
    return n / elapsed, cpu, rss


def run_plain(tmp, port, topic, n):
    lines = f"{tmp}/lines.jsonl"
    if not os.path.exists(lines):
        with open(lines, "w") as f:
            pad = "x" * 200
            for i in range(1, n + 1):
                f.write(json.dumps({"@timestamp": "2026-11-26T10:00:00.000000Z",
                                    "event": {"kind": "event", "category": ["process"], "type": ["info"],
                                              "action": "synthetic", "sequence": i, "module": "hids",
                                              "dataset": "hids.synthetic"},
                                    "host": {"id": "3d1219c7c4c5404aaa1f6d2a48adfda4", "hostname": "vm"},
                                    "hids": {"plugin": "synthetic", "run_id": "0123456789abcdef", "tty": pad}},
                                   separators=(",", ":")) + "\n")
    start = time.monotonic()
    p = subprocess.Popen([f"{REL}/examples/plain_producer", f"127.0.0.1:{port}", topic, lines],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # wait4 gives the producer's own CPU and peak RSS once it has exited.
    _, _, ru = os.wait4(p.pid, 0)
    elapsed = time.monotonic() - start
    out = p.stdout.read()
    sent = float(out.split(" in ")[1].split()[0]) if " in " in out else elapsed
    return n / sent, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hids-pipeline-")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(["tansu", "broker", "--listener-url", url, "--advertised-listener-url", url,
                               "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        results = {"hids-agent (synthetic plugin -> master -> kafka)": [], "plain librdkafka producer": []}
        for r in range(args.runs):
            for name in results:
                topic = f"t{r}{'a' if name.startswith('hids') else 'p'}"
                subprocess.run(["tansu", "topic", "create", "--broker", url, "--partitions", "1", topic],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                fn = run_agent if name.startswith("hids") else run_plain
                results[name].append(fn(tmp, port, topic, args.events))
        print(f"# pipeline: {args.events} events of ~430 bytes, tansu (memory storage) on loopback, "
              f"{os.cpu_count()} CPUs, median of {args.runs} runs")
        print(f"{'producer':<50} {'events/s':>9} {'cpu s':>6} {'cpu us/event':>12} {'peak RSS':>9}")
        for name, rows in results.items():
            rate = statistics.median(x[0] for x in rows)
            cpu = statistics.median(x[1] for x in rows)
            rss = statistics.median(x[2] for x in rows)
            print(f"{name:<50} {rate:>9.0f} {cpu:>6.2f} {cpu * 1e6 / args.events:>12.1f} {rss / 1024:>7.1f}MB")
    finally:
        broker.kill()
        broker.wait()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()

