"""`thpcore bench`: the headline speed figures on this machine, without pytest (the full set,
with statistics, is `pytest benchmarks --benchmark-only`)."""

from __future__ import annotations

import tempfile
import time

from .constants import MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_faults(thp: bool) -> float:
    """Write faults, simulated 4 KiB pages per second (1 GiB, best of 3)."""
    from .machine import Machine
    size = 1 << 30
    m = Machine("4G", seed=0, transparent_hugepage="always" if thp else "never")
    p = m.spawn()
    addr = p.mmap(size)
    if thp:
        p.madvise(addr, size, MADV_HUGEPAGE)
    best = float("inf")
    for _ in range(3):
        p.madvise(addr, size, MADV_DONTNEED)
        best = min(best, _timed(p.write, addr, size))
    return size / 4096 / best


def bench_collapse() -> float:
    """MADV_COLLAPSE of 4 KiB-populated memory, 2 MiB regions per second (1 GiB)."""
    from .machine import Machine
    size = 1 << 30
    m = Machine("4G", seed=0, transparent_hugepage="never")
    p = m.spawn()
    addr = p.mmap(size)
    p.write(addr, size)
    return size / (2 << 20) / _timed(p.madvise, addr, size, MADV_COLLAPSE)


def bench_scenario() -> float:
    """The embedded default scenario, seconds of wall time."""
    from .scenario import load_scenario, run_scenario
    return _timed(run_scenario, load_scenario())


def bench_sweep(workers: int) -> float:
    """A 16-job sweep of a 16 GiB version of the default scenario, seconds of wall time."""
    from .sweep import Sweep, run_sweep
    text = ('scenario = "default"\nseeds = [0, 1]\n'
            'variants = ["khugepaged-tuned", "uhugepaged-priority"]\n[parameters]\n'
            '"machine.memory" = ["16G"]\n"process.db.size" = ["1G", "2G", "3G", "4G"]\n'
            '"process.batch.size" = ["2G"]\n"run.duration" = [600]\n')
    with tempfile.TemporaryDirectory() as d:
        return _timed(run_sweep, Sweep(text), d, workers)


def main() -> int:
    rows = [("write faults, 4 KiB", f"{bench_faults(False) / 1e6:.1f} M pages/s"),
            ("write faults, THP at fault", f"{bench_faults(True) / 1e6:.1f} M pages/s"),
            ("MADV_COLLAPSE", f"{bench_collapse() / 1e3:.1f} K regions/s")]
    for name, value in rows:
        print(f"{name:<34} {value}")
    print(f"{'default scenario (thpcore run)':<34} {bench_scenario():.1f} s")
    one, two = bench_sweep(1), bench_sweep(2)
    print(f"{'sweep, 16 jobs, 1 worker':<34} {one:.1f} s")
    print(f"{'sweep, 16 jobs, 2 workers':<34} {two:.1f} s  ({one / two:.2f}x)")
    return 0
