"""Helpers shared by the benchmark scripts: free ports, /proc readings, a fresh etcd."""
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status_kb(pid, key):
    """A /proc/<pid>/status field in kB (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid):
    """User plus system CPU of a process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


class Etcd:
    """A fresh single-member etcd on free loopback ports, its data under `tmp`."""

    def __init__(self, tmp, flags=()):
        self.dir = tempfile.mkdtemp(dir=tmp, prefix="etcd-")
        port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            ["etcd", "--data-dir", self.dir, "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
             f"http://127.0.0.1:{peer}", "--initial-cluster", f"default=http://127.0.0.1:{peer}"] + list(flags),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("etcd did not start")

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            out = {}
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    try:
                        out[name] = float(value)
                    except ValueError:
                        pass
            return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
