"""Multi-size THP (mTHP) at anonymous faults: the simulator against the live kernel.

Each case runs the same operations on a 2 MiB-aligned MADV_HUGEPAGE region with the 16kB and
64kB sizes at "madvise" and everything else off (so only this region can get mTHPs, not the
interpreter's heap), then compares the folio layout the pages end up in (H head, t tail,
s small page, . not present, read from pagemap + kpageflags), the per-size stats deltas and
smaps. The live side runs in a fresh interpreter; the mTHP counters are machine-wide, so a
mismatch is measured again before it counts."""

import os

import numpy as np
import pytest

import thpcore
from thpcore import MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE, MADV_PAGEOUT, live
from thpcore.proc import task_mmu

KB, MB, P = 1024, 1 << 20, 4096
SIZES = (16, 64)
KNOBS = {"enabled": "never", "hugepages-16kB/enabled": "madvise",
         "hugepages-64kB/enabled": "madvise", "hugepages-32kB/enabled": "never",
         "hugepages-128kB/enabled": "never", "hugepages-256kB/enabled": "never",
         "hugepages-512kB/enabled": "never", "hugepages-1024kB/enabled": "never",
         "hugepages-2048kB/enabled": "inherit"}
STATS = ("anon_fault_alloc", "anon_fault_fallback", "nr_anon", "nr_anon_partially_mapped",
         "split", "split_deferred", "swpout_fallback")
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 15, 16
PFN_MASK = (1 << 55) - 1


def _layout(pagemap, kpageflags) -> str:
    out = []
    for e in pagemap:
        if not int(e) >> 63:
            out.append(".")
            continue
        f = kpageflags(int(e) & PFN_MASK)
        out.append("H" if f >> KPF_COMPOUND_HEAD & 1 else "t" if f >> KPF_COMPOUND_TAIL & 1 else "s")
    return "".join(out)


# Each case: a list of steps on the region, then the page range whose layout is compared.
CASES = {
    "fault": ([("write", 0, 256 * KB)], 0, 64),
    "unaligned_vma": ([("munmap", 0, P), ("write", P, 128 * KB)], P, 32),
    "pte_not_none": ([("read", 8 * P, P), ("write", 0, 64 * KB)], 0, 16),
    "dontneed_part": ([("write", 0, 128 * KB), ("madvise", 4 * P, P, MADV_DONTNEED)], 0, 32),
    "dontneed_whole": ([("write", 0, 128 * KB), ("madvise", 0, 64 * KB, MADV_DONTNEED)], 0, 32),
    "read_then_write": ([("read", 0, 64 * KB), ("write", 0, 64 * KB)], 0, 16),
    "collapse": ([("write", 0, 2 * MB), ("madvise", 0, 2 * MB, MADV_COLLAPSE)], 0, 32),
}
SWAP_CASES = {
    "pageout_whole": ([("write", 0, 128 * KB), ("madvise", 0, 64 * KB, MADV_PAGEOUT)], 0, 32),
    "pageout_part": ([("write", 0, 128 * KB), ("madvise", 0, 8 * P, MADV_PAGEOUT)], 0, 32),
}


def _live_child(steps, first, n):
    s0 = {kb: live.mthp_stats(kb) for kb in SIZES}
    r = live.Region.aligned(2 * MB)
    r.madvise(0, 2 * MB, MADV_HUGEPAGE)
    for op, off, length, *advice in steps:
        if op == "write":
            r.write(off, length, value=1)
        elif op == "read":
            r.read(off, length)
        elif op == "munmap":
            r.munmap(off, length)
        else:
            try:
                r.madvise(off, length, advice[0])
            except OSError:
                pass
    pm = r.pagemap(first, n * P)
    present = [int(e) & PFN_MASK for e in pm if int(e) >> 63]
    flags = dict(zip(present, live.kpageflags(present))) if present else {}
    lay = _layout(pm, flags.__getitem__)
    sm = r.smaps(partial="include")
    s1 = {kb: live.mthp_stats(kb) for kb in SIZES}
    return (lay, {kb: {k: s1[kb][k] - s0[kb][k] for k in STATS} for kb in SIZES},
            {k: sm.get(k, 0) for k in ("Rss", "AnonHugePages", "Swap")})


def _sim(steps, first, n, swap=False):
    m = thpcore.Machine("1G", seed=0, swap="256M" if swap else None)
    for name, value in KNOBS.items():
        m.sysfs.write(f"/sys/kernel/mm/transparent_hugepage/{name}", value)
    stat = lambda kb, k: int(m.sysfs.read(
        f"/sys/kernel/mm/transparent_hugepage/hugepages-{kb}kB/stats/{k}"))
    s0 = {kb: {k: stat(kb, k) for k in STATS} for kb in SIZES}
    p = m.spawn()
    a = p.mmap(2 * MB)
    assert a % (2 * MB) == 0                    # 2 MiB-multiple anon lengths are aligned
    p.madvise(a, 2 * MB, MADV_HUGEPAGE)
    for op, off, length, *advice in steps:
        if op == "write":
            p.write(a + off, length, 1)
        elif op == "read":
            p.read(a + off, length)
        elif op == "munmap":
            p.munmap(a + off, length)
        else:
            try:
                p.madvise(a + off, length, advice[0])
            except OSError:
                pass
        m.check()
    pm = task_mmu.pagemap(m, p.mm, a + first, a + first + n * P)
    lay = _layout(pm, lambda pfn: int(task_mmu.kpageflags(m, np.array([pfn]))[0][0]))
    sm = {"Rss": 0, "AnonHugePages": 0, "Swap": 0}
    for e in p.smaps():
        if e["end"] > a and e["start"] < a + 2 * MB:
            for k in sm:
                sm[k] += e[k]
    return (lay, {kb: {k: stat(kb, k) - s0[kb][k] for k in STATS} for kb in SIZES}, sm)


def _settled(measure, expected, attempts=3):
    for _ in range(attempts):
        got = measure()
        if got == expected:
            break
    return got


def _need_mthp():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        live.read_knob("hugepages-64kB/enabled")
    except OSError:
        pytest.skip("no mTHP sizes on this kernel")


@pytest.mark.parametrize("case", sorted(CASES))
def test_mthp_fault_layout_and_stats_match_the_kernel(case):
    _need_mthp()
    steps, first, n = CASES[case]
    expected = _sim(steps, first, n)
    with live.thp_settings(**KNOBS):
        got = _settled(lambda: live.run_fresh(_live_child, steps, first, n), expected)
    assert got == expected


@pytest.mark.parametrize("case", sorted(SWAP_CASES))
def test_mthp_pageout_to_a_swap_file_matches_the_kernel(case):
    _need_mthp()
    if any(line.split()[0] != "Filename" for line in open("/proc/swaps")):
        pytest.skip("another swap device is active")
    steps, first, n = SWAP_CASES[case]
    expected = _sim(steps, first, n, swap=True)
    try:
        swap = live.swap_file(256 * MB)
        swap.__enter__()
    except live.Unsupported as e:
        pytest.skip(str(e))
    try:
        with live.thp_settings(**KNOBS):
            got = _settled(lambda: live.run_fresh(_live_child, steps, first, n), expected)
    finally:
        swap.__exit__(None, None, None)
    assert got == expected
