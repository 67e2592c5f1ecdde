"""Benchmark: CPU cost of the ways an encode run could report progress from its tasks to the driver.

Each "run" is what `jobs.encode` does on a small corpus: --tasks tasks of a fixed amount of Python work, each
sending --reports progress counts while it works, the driver summing them as they arrive. Candidates:
  none            no progress at all (the floor)
  actor_per_run   a counter actor created for each run (tokshard before: Ray starts a worker process for it)
  named_actor     one named actor per Ray session, found by name and kept alive by the driver between runs,
                  counts keyed by a run token
  generator       tasks are streaming generators that yield their counts, the driver reads them with the results
CPU = utime + stime of the driver and every process Ray runs for it (procmem.TreeWatch), per run, after two
warm-up runs, --repeat runs per candidate, candidates interleaved; the median and [min .. max] are printed.

    python bench/progress_channel.py [--tasks 8] [--reports 10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from procmem import TreeWatch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class Counter:
    def __init__(self) -> None:
        self.runs: dict[str, list[int]] = {}

    def add(self, run: str, documents: int, tokens: int) -> None:
        totals = self.runs.setdefault(run, [0, 0])
        totals[0] += documents
        totals[1] += tokens

    def totals(self, run: str) -> list[int]:
        return self.runs.get(run, [0, 0])


def work() -> int:
    return sum(range(300_000))


def task_plain(reports: int) -> int:
    for _ in range(reports):
        work()
    return reports


def task_actor(reports: int, counter: Any, run: str) -> int:
    for _ in range(reports):
        work()
        counter.add.remote(run, 1, 100)
    return reports


def task_generator(reports: int):
    for _ in range(reports):
        work()
        yield (1, 100)
    yield "done"


def run_once(kind: str, tasks: int, reports: int, run: str, session: dict[str, Any]) -> None:
    import ray

    if kind == "none":
        ray.get([ray.remote(num_cpus=1)(task_plain).remote(reports) for _ in range(tasks)])
        return
    if kind == "generator":
        gens = [ray.remote(num_cpus=1)(task_generator).remote(reports) for _ in range(tasks)]
        got = 0
        while gens:
            ready, _ = ray.wait(gens, num_returns=1, timeout=0.5)
            for g in ready:
                item = ray.get(next(g))
                if item == "done":
                    gens.remove(g)
                else:
                    got += item[0]
        assert got == tasks * reports
        return
    if kind == "actor_per_run":
        counter = ray.remote(num_cpus=0)(Counter).remote()
    else:  # named_actor: created on first use, then found by name; the handle kept here keeps it alive
        if "counter" not in session:
            session["counter"] = ray.remote(num_cpus=0)(Counter).options(
                name="progress-bench", get_if_exists=True).remote()
        counter = session["counter"]
    refs = [ray.remote(num_cpus=1)(task_actor).remote(reports, counter, run) for _ in range(tasks)]
    while refs:
        _, refs = ray.wait(refs, num_returns=1, timeout=0.5)
        ray.get(counter.totals.remote(run))
    assert ray.get(counter.totals.remote(run))[0] == tasks * reports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--reports", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False)
    kinds = ["none", "actor_per_run", "named_actor", "generator"]
    session: dict[str, Any] = {}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.repeat + 2):
        for kind in kinds:
            watch = TreeWatch(os.getpid(), reset=False).start()
            c0 = time.process_time()
            run_once(kind, args.tasks, args.reports, f"{kind}-{i}", session)
            driver = time.process_time() - c0
            watch.stop()
            if i >= 2:  # two warm-up rounds: worker processes started, the named actor created
                cpu[kind].append(driver - watch.own_cpu() + watch.cpu_total())
    ray.shutdown()
    print(json.dumps({k: {"cpu_s_median": round(statistics.median(v), 2), "min": round(min(v), 2),
                          "max": round(max(v), 2)} for k, v in cpu.items()}, indent=1))


if __name__ == "__main__":
    main()
