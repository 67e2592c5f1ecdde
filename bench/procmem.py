"""Peak memory and CPU time of a process tree, read from Linux /proc, for the benchmarks.

Why /proc and not `resource.getrusage` inside the task: Ray workers are long-lived and reused across tasks and
benchmark phases, and the encode task is the library's own code, so the benchmark measures from outside:

- `VmHWM` in /proc/PID/status is the kernel's high-water mark of the process's resident set -- an exact peak,
  not a sample -- and writing "5" to /proc/PID/clear_refs resets it to the current RSS, so each phase of a
  benchmark gets its own peak from the same worker processes. A watcher thread reads it every `interval`
  seconds and keeps the largest value per process, so a worker that exits is still counted up to its last read.
- CPU time is utime + stime from /proc/PID/stat: the work done, whatever else the machine runs at the time.
- The process tree is found from parent pids, so only our own Ray instance (or Pool) is measured, not another
  person's on the same machine. Ray workers are the raylet's children titled `ray::...` (Ray sets the title to
  the running task, e.g. `ray::encode_slice`, and `ray::IDLE` between tasks); its agents are skipped.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


def parents() -> dict[int, int]:
    """pid -> parent pid for every process we can read."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    out[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
    return out


def descendants(root: int) -> list[int]:
    table = parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def memory(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS in bytes; {} if the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return out


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def is_ray_worker(cmdline: str) -> bool:
    return cmdline.startswith("ray::") and not cmdline.split()[0].endswith("Agent")


@dataclass
class ProcStats:
    pid: int
    titles: set[str] = field(default_factory=set)
    peak_rss: int = 0
    cpu_start: float = 0.0
    cpu_last: float = 0.0

    @property
    def cpu(self) -> float:
        return self.cpu_last - self.cpu_start

    @property
    def kind(self) -> str:
        """`ray-worker`, or the program's name (the script's, for Python) as it appeared while watched."""
        if any(is_ray_worker(t) for t in self.titles):
            return "ray-worker"
        return "/".join(sorted({_program(t) for t in self.titles if t})) or "?"


def _program(cmdline: str) -> str:
    parts = cmdline.split()
    name = os.path.basename(parts[0])
    if name.startswith("python"):
        script = next((p for p in parts[1:] if p.endswith(".py")), None)
        return os.path.basename(script) if script else name
    return name


class TreeWatch:
    """Follow every descendant of `root` while a phase runs: per process peak RSS, CPU time and titles.

    `start()` resets the peaks of the processes already there (`reset=True`) and takes their CPU baseline;
    processes born later start from zero. `stop()` takes a last reading and returns the stats per pid.
    """

    def __init__(self, root: int, interval: float = 0.1, reset: bool = True, include_root: bool = False) -> None:
        self.root, self.interval, self.reset, self.include_root = root, interval, reset, include_root
        self.stats: dict[int, ProcStats] = {}
        self.reset_ok = True
        self._own_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self, first: bool = False) -> None:
        for pid in [self.root] * self.include_root + descendants(self.root):
            cmd = title(pid)
            cpu = cpu_seconds(pid)
            if not cmd or cpu is None:
                continue
            s = self.stats.get(pid)
            if s is None:
                if first and self.reset:
                    self.reset_ok &= reset_peak(pid)
                s = self.stats[pid] = ProcStats(pid, cpu_start=cpu if first else 0.0)
            s.titles.add(cmd)
            s.cpu_last = cpu
            s.peak_rss = max(s.peak_rss, memory(pid).get("VmHWM", 0))

    def _run(self) -> None:
        t0 = time.thread_time()
        while not self._stop.wait(self.interval):
            self._read()
            self._own_cpu = time.thread_time() - t0

    def own_cpu(self) -> float:
        """CPU seconds the watcher thread itself used: subtract it from the watching process's CPU time."""
        return self._own_cpu

    def start(self) -> TreeWatch:
        self._read(first=True)
        self._thread.start()
        return self

    def stop(self) -> dict[int, ProcStats]:
        self._stop.set()
        self._thread.join()
        self._read()
        return self.stats

    def workers(self, task: str | None = None) -> list[ProcStats]:
        """Ray worker processes; with `task`, only those seen running it (title `ray::<task>`)."""
        out = [s for s in self.stats.values() if s.kind == "ray-worker"]
        if task is not None:
            out = [s for s in out if any(t.split()[0] == f"ray::{task}" for t in s.titles)]
        return out

    def cpu_total(self) -> float:
        return sum(s.cpu for s in self.stats.values())


def mib(n: int) -> float:
    return round(n / 2**20, 1)
