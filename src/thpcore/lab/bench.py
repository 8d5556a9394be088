"""`thpcore bench [--json FILE] [--quick]`: the headline speed and memory figures on this
machine, without pytest (the same operations, with statistics, are `pytest benchmarks
--benchmark-only`). Each record names the operation, its value and unit, the target, and the
parameters that reproduce it; where the live kernel can do the same operation (root), its figure
is measured in the same run and put beside it, and so is the pure-Python reference
(thpcore.reference) for the kernel steps the engine accelerates."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from thpcore import _engine, live
from thpcore.constants import MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE
from thpcore.lab.scenario import load_scenario, run_scenario
from thpcore.lab.sweep import Sweep, run_sweep
from thpcore.machine import Machine
from thpcore.reference import khugepaged as ref
from thpcore.reference.page_alloc import ReferenceZone

HPAGE = 2 << 20


def _best(fn, rounds: int = 3, setup=None) -> float:
    best = float("inf")
    for _ in range(rounds):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_faults(thp: bool) -> float:
    """Write faults, simulated 4 KiB pages per second (1 GiB, best of 3)."""
    size = 1 << 30
    m = Machine("4G", seed=0, transparent_hugepage="always" if thp else "never")
    p = m.spawn()
    addr = p.mmap(size)
    if thp:
        p.madvise(addr, size, MADV_HUGEPAGE)
    t = _best(lambda: p.write(addr, size), setup=lambda: p.madvise(addr, size, MADV_DONTNEED))
    return size / 4096 / t


def bench_collapse() -> float:
    """MADV_COLLAPSE of 4 KiB-populated memory, 2 MiB regions per second (512 MiB, best of 3)."""
    size = 512 << 20
    m = Machine("2G", seed=0, transparent_hugepage="never")
    p = m.spawn()
    addr = p.mmap(size)

    def setup():
        p.madvise(addr, size, MADV_DONTNEED)
        p.write(addr, size)
    return size / HPAGE / _best(lambda: p.madvise(addr, size, MADV_COLLAPSE), setup=setup)


def bench_scan() -> float:
    """khugepaged PMD-region scans per second: 3 GiB of 4 KiB-mapped regions that all fail
    max_ptes_none=0 at their last PTE (every PTE examined), one pass."""
    m = Machine("4G", seed=0, transparent_hugepage="madvise")
    k = m.thp.khugepaged
    k.max_ptes_none = 0
    n = 1536
    k.pages_to_scan = n * 512
    p = m.spawn()
    a = p.mmap(n * HPAGE)
    p.write(a, n * HPAGE)
    for i in range(n):
        p.madvise(a + (i + 1) * HPAGE - 4096, 4096, MADV_DONTNEED)
    p.madvise(a, n * HPAGE, MADV_HUGEPAGE)
    return n / _best(m.khugepaged.do_scan)


def bench_buddy() -> float:
    """Order-0 alloc+free pairs per second on a 4 GiB zone (batches of 4096)."""
    z = _engine.Zone(1 << 20)
    z.set_watermarks(1024, 1280, 1536)
    flags = _engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT

    def pairs():
        for _ in range(64):
            z.free_bulk(z.alloc_bulk(0, 1, 4096, flags, _engine.PY_PG_LRU), 0)
    return 64 * 4096 / _best(pairs)


def compaction_setup():
    """(machine, fragment): a 2 GiB zone with 1.8 GiB of 4 KiB pages; fragment() rewrites them
    and frees every other 64 KiB (shared with benchmarks/test_bench_compaction.py)."""
    m = Machine("2G", seed=0, transparent_hugepage="never")
    p = m.spawn()
    size = 1800 << 20
    a = p.mmap(size)
    p.write(a, size)

    def fragment():
        p.madvise(a, size, MADV_DONTNEED)
        p.write(a, size)
        for off in range(0, size, 128 << 10):
            p.madvise(a + off, 64 << 10, MADV_DONTNEED)
    return m, fragment


def reference_buddy(pairs: int = 4096) -> float:
    """The pure-Python reference allocator (thpcore.reference.page_alloc) on the same
    order-0 alloc+free pairs as bench_buddy, pairs per second."""
    z = ReferenceZone(1 << 20)
    z.set_watermarks(1024, 1280, 1536)
    flags = _engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT

    def run():
        pfns = [z.alloc(0, 1, flags, _engine.PY_PG_LRU) for _ in range(pairs)]
        for pfn in pfns:
            z.free(pfn, 0)
    return pairs / _best(run, rounds=2)


def bench_compaction() -> float:
    """Pages migrated per second by a full compaction of compaction_setup()'s zone."""
    m, fragment = compaction_setup()
    t = _best(lambda: m.page_tables.compact(-1, True, True), setup=fragment)
    return m.page_tables.compact_stats()["migrated"] / t


def bench_bytes_per_page() -> float:
    """Engine bytes per simulated 4 KiB page: frame table plus the PTE pool of a 4 GiB machine
    fully populated with 4 KiB pages (the worst case: every PTE table written)."""
    m = Machine("4G", seed=0, transparent_hugepage="never")
    p = m.spawn()
    size = 3 << 30
    p.write(p.mmap(size), size)
    tables = m.page_tables.nr_tables
    return (m.page_alloc.zone.nbytes + tables * (512 * 4 + 8)) / m.nr_pages


def bench_khugepaged_ratio() -> float:
    """Simulated seconds per wall second of khugepaged on its default settings over a 16 GiB
    machine with 8 GiB of 4 KiB-mapped, advised memory (10 simulated minutes)."""
    m = Machine("16G", seed=0, transparent_hugepage="madvise")
    p = m.spawn()
    a = p.mmap(8 << 30)
    p.write(a, 8 << 30)
    p.madvise(a, 8 << 30, MADV_HUGEPAGE)
    t0 = time.perf_counter()
    m.run(seconds=600)
    return 600 / (time.perf_counter() - t0)


def bench_scenario() -> float:
    """The embedded default scenario, seconds of wall time."""
    return _best(lambda: run_scenario(load_scenario()), rounds=1)


def bench_sweep(workers: int) -> float:
    """A 16-job sweep of a 16 GiB version of the default scenario, seconds of wall time."""
    text = ('scenario = "default"\nseeds = [0, 1]\n'
            'variants = ["khugepaged-tuned", "uhugepaged-priority"]\n[parameters]\n'
            '"machine.memory" = ["16G"]\n"process.db.size" = ["1G", "2G", "3G", "4G"]\n'
            '"process.batch.size" = ["2G"]\n"run.duration" = [600]\n')
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_sweep(Sweep(text), d, workers)
        return time.perf_counter() - t0


def live_collapse() -> float | None:
    """The live kernel's MADV_COLLAPSE, 2 MiB regions per second (64 MiB, THP enabled=never
    for the populate, restored); None without root or MADV_COLLAPSE."""
    if os.geteuid() != 0:
        return None
    n = 32
    try:
        with live.thp_settings(enabled="never"):
            r = live.Region.aligned(n * HPAGE)
            try:
                def setup():
                    r.madvise(0, n * HPAGE, MADV_DONTNEED)
                    r.write(0, n * HPAGE, value=1)
                rc = [0]

                def run():
                    rc[0] = rc[0] or r.madvise(0, n * HPAGE, MADV_COLLAPSE)
                t = _best(run, setup=setup)
            finally:
                r.close()
    except OSError:
        return None
    return None if rc[0] else n / t


def live_faults() -> float | None:
    """The live kernel's write faults, 4 KiB pages per second (256 MiB, THP off for the range)."""
    try:
        r = live.Region.aligned(256 << 20)
    except (OSError, AttributeError):
        return None
    try:
        r.madvise(0, 256 << 20, MADV_NOHUGEPAGE)
        t = _best(lambda: r.write(0, 256 << 20, value=1),
                  setup=lambda: r.madvise(0, 256 << 20, MADV_DONTNEED))
    finally:
        r.close()
    return (256 << 20) / 4096 / t


def records(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name, value, unit, target, params, live=None, reference=None):
        rows.append({"name": name, "value": round(value, 3), "unit": unit, "target": target,
                     "params": params, "live_kernel": None if live is None else round(live, 3),
                     "python_reference": None if reference is None else round(reference, 3)})

    add("pmd_region_scans", bench_scan(), "regions/s", ">= 1e6 (100x ref)",
        "khugepaged pass, 1536 4 KiB-mapped regions, max_ptes_none=0",
        reference=ref.bench_scan(256, rounds=1))
    add("madv_collapse", bench_collapse(), "regions/s", ">= 1e5 (100x ref)",
        "MADV_COLLAPSE of 512 MiB of 4 KiB pages", live_collapse(),
        ref.bench_collapse(64, rounds=1))
    add("write_faults_4k", bench_faults(False), "pages/s", ">= 2e7",
        "1 GiB write, enabled=never", live_faults())
    add("write_faults_thp", bench_faults(True), "pages/s", ">= 2e7",
        "1 GiB write, enabled=always + MADV_HUGEPAGE")
    add("buddy_pairs", bench_buddy(), "alloc+free pairs/s", ">= 2e7",
        "order-0, batches of 4096, 4 GiB zone", reference=reference_buddy())
    add("compaction_migrated", bench_compaction(), "pages/s", ">= 1e7",
        "full compaction, 2 GiB zone, 1.8 GiB 4 KiB pages, every other 64 KiB freed")
    add("bytes_per_page", bench_bytes_per_page(), "bytes/4 KiB page", "<= 16",
        "4 GiB machine, 3 GiB of 4 KiB pages (every PTE table written)")
    add("khugepaged_speedup", bench_khugepaged_ratio(), "simulated s / wall s", "",
        "default knobs, 16 GiB machine, 8 GiB advised 4 KiB memory, 600 s")
    if not quick:
        add("default_scenario", bench_scenario(), "s wall", "< 30", "thpcore run")
        one, two = bench_sweep(1), bench_sweep(2)
        add("sweep_1_worker", one, "s wall", "", "16 jobs, 16 GiB default scenario, -j 1")
        add("sweep_2_workers", two, "s wall", f"~{one / 2:.1f} (2x)", "the same, -j 2")
    return rows


def main(json_path: str | None = None, quick: bool = False) -> int:
    rows = records(quick)
    print(f"{'name':<20} {'value':>11} {'unit':<21} {'target':<18} {'live kernel':>11} "
          f"{'py reference':>12}  params")
    for r in rows:
        live = "" if r["live_kernel"] is None else f"{r['live_kernel']:.4g}"
        ref = "" if r["python_reference"] is None else f"{r['python_reference']:.4g}"
        print(f"{r['name']:<20} {r['value']:>11.4g} {r['unit']:<21} {r['target']:<18} "
              f"{live:>11} {ref:>12}  {r['params']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"written to {json_path}")
    return 0
