"""Helpers shared by the benchmark scripts: free ports, /proc readings, a fresh etcd, tansu,
PostgreSQL and hids-server."""
import json
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
        port, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.flags = list(flags)
        self._spawn()

    def _spawn(self):
        peer = f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            ["etcd", "--data-dir", self.dir, "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"default={peer}"] + self.flags,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("etcd did not start")

    def restart(self):
        """Stops etcd (SIGTERM) and starts it again on its data: leases and keys kept."""
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self._spawn()

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


def tree_cpu_ticks(pid):
    """CPU of a process, its live descendants and its waited-for dead children, in clock
    ticks: what a server that forks per connection (PostgreSQL) spends in all."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += cpu_ticks(p)
        todo.extend(children.get(p, []))
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        total += int(fields[13]) + int(fields[14])
    except (OSError, IndexError, ValueError):
        pass
    return total


def stop_process(proc, timeout=20):
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(what, timeout, check, every=0.2):
    """Polls `check` until it returns something true; exits naming `what` after `timeout`."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def get_json(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


class Tansu:
    """A fresh tansu broker (Kafka API) on a free loopback port. SQLite storage in its own
    directory, as the tests run it (a storage engine tansu was built without silently
    discards data: see scripts/lib.sh)."""

    def __init__(self, tmp):
        self.dir = tempfile.mkdtemp(dir=tmp, prefix="tansu-")
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.addr}"
        self.log = open(os.path.join(self.dir, "tansu.log"), "ab")
        self.proc = subprocess.Popen(
            ["tansu", "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "sqlite://tansu.db"], cwd=self.dir, stdout=self.log, stderr=self.log)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for("tansu to listen", 20, listening, 0.1)

    def create_topic(self, name, partitions=1):
        subprocess.run(["tansu", "topic", "create", "--broker", f"tcp://{self.addr}", "--partitions",
                        str(partitions), name], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """A throwaway PostgreSQL cluster on a free loopback port, trust authentication,
    superuser postgres. PostgreSQL refuses to run as root, so the cluster belongs to the
    postgres user (started through runuser) and lives in its own directory under /tmp,
    which that user can reach."""

    def __init__(self):
        majors = sorted(int(d) for d in os.listdir("/usr/lib/postgresql") if d.isdigit()
                        and os.path.exists(f"/usr/lib/postgresql/{d}/bin/initdb"))
        if not majors:
            raise SystemExit("PostgreSQL is missing: apt-get install postgresql")
        self.bin = f"/usr/lib/postgresql/{majors[-1]}/bin"
        self.dir = tempfile.mkdtemp(prefix="hids-bench-pg-")
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self._as_postgres("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self.port = free_port()
        self._as_postgres("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "server.log"), "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "-w", "-t", "60", "start")
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())

    def _as_postgres(self, tool, *args):
        subprocess.run(["runuser", "-u", "postgres", "--", f"{self.bin}/{tool}", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, db="postgres"):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name):
        subprocess.run([f"{self.bin}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(), "-c",
                        f"CREATE DATABASE {name}"], check=True, stdout=subprocess.DEVNULL)
        return self.url(name)

    def cpu_ticks(self):
        """The postmaster and every backend, live or gone."""
        return tree_cpu_ticks(self.pid)

    def stop(self):
        self._as_postgres("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class HidsServer:
    """`hids-server` on a free loopback port: `config` is everything but `[http]`."""

    def __init__(self, binary, tmp, name, config):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.config = os.path.join(self.dir, "server.toml")
        with open(self.config, "w") as f:
            f.write(f'{config}\n[http]\nlisten = "127.0.0.1:{self.port}"\n')
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen([binary, "--config", self.config], cwd=self.dir, stdout=self.log,
                                     stderr=self.log)
        self.pid = self.proc.pid

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path):
        return get_json(self.url(path))

    def health(self):
        """/api/v1/health, or None while the API does not answer."""
        if self.proc.poll() is not None:
            return None
        try:
            return self.get("/api/v1/health")
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout=30):
        def ready():
            if self.proc.poll() is not None:
                raise SystemExit(f"hids-server exited ({self.proc.returncode}); log {self.dir}/server.log")
            return self.health()
        return wait_for(f"hids-server on port {self.port}", timeout, ready, 0.1)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        stop_process(self.proc)
        self.log.close()
