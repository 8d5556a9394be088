"""The 1 TiB host (issue 9): `python -m thpcore.lab.scale [--memory 1T]`, best measured with
`/usr/bin/time -v` for the peak RSS (target: <= 4 GiB for 1 TiB).

250 processes of 4 GiB populate the machine: even ones advise MADV_HUGEPAGE first (THP at
fault), odd ones populate with 4 KiB pages and advise afterwards, and every other odd one frees
a quarter of each 64 MiB (holes khugepaged must respect). khugepaged then runs one simulated
hour scanning 4096 regions a second, and a full compaction (compact_memory) follows."""

from __future__ import annotations

import argparse
import resource
import time

from thpcore.constants import MADV_DONTNEED, MADV_HUGEPAGE
from thpcore.machine import Machine
from thpcore.units import parse_size


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m thpcore.lab.scale", description=__doc__)
    ap.add_argument("--memory", default="1T")
    ap.add_argument("--khugepaged-seconds", type=float, default=3600)
    args = ap.parse_args(argv)
    total = parse_size(args.memory)
    per = 4 << 30 if total >= 1 << 40 else max(total // 256 // (2 << 20) * (2 << 20), 2 << 20)
    nproc = int(total * 0.98) // per              # leave the watermarks and page tables room
    t0 = time.perf_counter()
    m = Machine(args.memory, seed=0)
    print(f"machine {args.memory}: {time.perf_counter() - t0:.1f} s, peak RSS "
          f"{peak_rss_gib():.2f} GiB", flush=True)
    t = time.perf_counter()
    for i in range(nproc):
        p = m.spawn(name=f"t{i}")
        a = p.mmap(per)
        if i % 2 == 0:
            p.madvise(a, per, MADV_HUGEPAGE)
        p.write(a, per)
        if i % 4 == 1:
            step = min(64 << 20, per)
            for r in range(0, per, step):
                p.madvise(a + r, step // 4, MADV_DONTNEED)
        if i % 2 == 1:
            p.madvise(a, per, MADV_HUGEPAGE)
    free = m.page_alloc.zone.nr_free_pages * 4096
    print(f"populated {nproc} processes x {per >> 20} MiB: {time.perf_counter() - t:.1f} s, "
          f"{free >> 30} GiB free, {m.vmstat['thp_fault_alloc']} THPs at fault, "
          f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    k = m.thp.khugepaged
    k.pages_to_scan, k.scan_sleep_millisecs = 512 * 4096, 1000
    t = time.perf_counter()
    m.run(seconds=args.khugepaged_seconds)
    wall = time.perf_counter() - t
    print(f"khugepaged {args.khugepaged_seconds:.0f} s simulated in {wall:.1f} s wall "
          f"({args.khugepaged_seconds / wall:.0f}x): {k.pages_collapsed} collapses, "
          f"{k.full_scans} full scans, peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    t = time.perf_counter()
    m.compaction.compact_memory()
    print(f"compact_memory: {time.perf_counter() - t:.1f} s, "
          f"{m.vmstat['compact_migrate_scanned']} pages scanned, peak RSS "
          f"{peak_rss_gib():.2f} GiB", flush=True)
    print(f"total {time.perf_counter() - t0:.1f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
