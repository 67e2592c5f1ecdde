"""A real multi-node Ray cluster on loopback, made of `ray start --block` processes, for tests that need one.

Each node is its own process group (start_new_session), so stopping or killing a node kills its raylet and its
workers and nothing else. Every process a node started carries the cluster's private temp dir on its command
line, which is how `stop` finds stragglers: only processes this cluster started are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _processes_whose(field: str, text: str) -> list[int]:
    """PIDs (this one aside) whose /proc/PID/`field` contains `text` (read from /proc; no extra dependency)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / field).read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text`."""
    return _processes_whose("cmdline", text)


def processes_with_env(marker: str) -> list[int]:
    """PIDs whose environment holds `marker`. Ray workers retitle themselves (`ray::IDLE`), so their command line
    does not say which Ray instance they belong to; the environment they inherited does."""
    return _processes_whose("environ", marker)


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


def task_processes(task_name: str) -> list[int]:
    """PIDs of Ray workers executing `task_name` right now (Ray titles them `ray::<task name>` while they run)."""
    return [pid for pid in processes_mentioning(f"ray::{task_name}")
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(f"ray::{task_name}".encode())]


def wait_for(condition, timeout: float, what: str, interval: float = 0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class LocalCluster:
    """`head` plus any number of worker nodes; `address` is what `--address` / `ray.init` take."""

    def __init__(self, head_cpus: int = 1, dashboard: bool = False, env: dict[str, str] | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: unix socket paths must fit 107 bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_port = free_port() if dashboard else None
        # The venv's bin first on PATH: job entrypoints (`tokshard ...`) run in the head's environment.
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
                    **(env or {})}
        self.nodes: list[subprocess.Popen] = []
        extra = ([f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
                 if dashboard else ["--include-dashboard=false"])
        self._start(["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", *extra], head_cpus)

    def _start(self, args: list[str], cpus: int) -> subprocess.Popen:
        raylets_before = len(self._raylets())
        # Several nodes share one host: every per-node port must differ (some default to fixed numbers).
        ports = [f"--{name}={free_port()}" for name in ("node-manager-port", "object-manager-port",
                                                        "metrics-export-port", "dashboard-agent-listen-port",
                                                        "dashboard-agent-grpc-port", "runtime-env-agent-port")]
        proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", *ports,
                                 *args],
                                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.nodes.append(proc)
        try:
            wait_for(lambda: proc.poll() is not None or len(self._raylets()) > raylets_before, 180,
                     "a Ray node to start", interval=0.25)
            assert proc.poll() is None, f"`ray start {' '.join(args)}` exited with {proc.returncode}"
        except BaseException:
            self.stop()
            raise
        return proc

    def _raylets(self) -> list[int]:
        return [p for p in processes_mentioning(self.temp_dir) if b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes()
                and not Path(f"/proc/{p}/cmdline").read_bytes().startswith(RAY.encode())]

    def add_node(self, cpus: int = 1) -> subprocess.Popen:
        """Start a worker node and wait until the head knows it (a raylet process is not yet a member).

        The wait also keeps nodes from racing each other: every node of this host picks its raylet's socket name in
        the shared session directory (`raylet`, `raylet.1`, ...) by looking for the first name not taken yet, and a
        raylet binds its socket only once it runs. A node started before the previous one registered (which comes
        after that bind) could pick the same name, and its raylet then dies with "bind: Address already in use"
        while `ray start --block` stays up: a member that never runs a task."""
        node = self._start([f"--address={self.address}"], cpus)
        wait_for(lambda: len(self._members_seen_by_head()) >= len(self.nodes), 180, "the node to join")
        return node

    def _members_seen_by_head(self) -> set[str]:
        """Node ids the head's raylet has been told are alive: itself included (it logs its own notification)."""
        log = next(Path(self.temp_dir).glob("session_*/logs/raylet.out"), None)
        text = log.read_text(errors="replace") if log else ""
        return set(re.findall(r"liveness notification for node, IsAlive = 1 node_id=(\w+)", text))

    def runs_on(self, node: subprocess.Popen, pid: int) -> bool:
        return node.pid in ancestors(pid)

    def kill_node(self, node: subprocess.Popen) -> None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=30)

    def stop(self) -> None:
        """SIGKILL every node's process group, then anything else that carries the cluster's temp dir: a test
        cluster holds nothing worth a graceful exit (`ray start --block` takes 30-60 s to stop cleanly)."""
        for node in self.nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=60)
        for pid in processes_mentioning(self.temp_dir):  # anything a killed node left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # its sessions' logs and sockets (~5 MB per cluster)
