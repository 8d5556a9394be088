"""The main job's speed (issue 8): the embedded default scenario (target: under 30 s of wall
time) and a sweep on one and on two local workers (target: close to twice as fast on two)."""

import time

import pytest

from thpcore.lab.scenario import load_scenario, run_scenario
from thpcore.lab.sweep import Sweep, run_sweep

SWEEP = """
scenario = "default"
seeds = [0, 1]
variants = ["khugepaged-tuned", "uhugepaged-priority"]
[parameters]
"machine.memory" = ["16G"]
"process.db.size" = ["2G", "4G"]
"process.batch.size" = ["2G"]
"run.duration" = [600]
"""


def test_default_scenario(benchmark):
    sc = load_scenario()
    results = benchmark.pedantic(run_scenario, args=(sc,), rounds=1, iterations=1)
    benchmark.extra_info["simulated_s"] = sc.run["duration"] * len(results)
    benchmark.extra_info["memory"] = sc.machine["memory"]


@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_workers(benchmark, tmp_path, workers):
    def run():
        out = tmp_path / f"w{workers}-{time.perf_counter_ns()}"
        return run_sweep(Sweep(SWEEP), out, workers=workers)
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["jobs"] = len(list(Sweep(SWEEP).jobs()))
