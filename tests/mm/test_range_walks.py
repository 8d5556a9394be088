"""The engine's range walks (PageTables.fault_range / zap_range) are a fast path: the same
operations must leave the same machine, bit for bit, as the per-region Python path."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thpcore
from thpcore import (MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE, MADV_PAGEOUT, PROT_READ,
                     PROT_WRITE, _engine)
from thpcore.mm import memory

PAGE = 4096
HP = 2 << 20
GIB = 1 << 30
ADVICE = [MADV_HUGEPAGE, MADV_DONTNEED, MADV_PAGEOUT, MADV_COLLAPSE]

# One operation: (kind, area, first page fraction, page count fraction, extra)
op = st.tuples(st.sampled_from(["mmap", "write", "write", "read", "madvise", "fork", "munmap",
                                "mprotect", "run", "exit"]),
               st.integers(0, 7), st.floats(0, 1), st.floats(0, 1),
               st.integers(0, 2 ** 32 - 1))


def _execute(ops, fast, memcg_max, mthp=False):
    saved = memory.FAST_RANGE_WALKS
    memory.FAST_RANGE_WALKS = fast
    try:
        # 1G: below 512M the kernel boots with THP off, and the walks must meet THPs.
        m = thpcore.Machine("1G", swap="16M", seed=3, transparent_hugepage="always")
        if mthp:                        # mTHP at fault wherever a PMD THP does not fit
            m.thp.hugepages_64kB.enabled = "always"
            m.thp.hugepages_16kB.enabled = "always"
        if memcg_max:
            m.cgroups.create("box")
            m.sysfs.write("/sys/fs/cgroup/box/memory.max", memcg_max)
        procs = [m.spawn(cgroup="box" if memcg_max else "")]
        areas = []                      # (proc index, addr, length)
        outcomes = []
        # One mapping straddles a GiB boundary (two PMD arrays).
        areas.append((0, procs[0].mmap(8 * HP, addr=GIB - 4 * HP), 8 * HP))
        for kind, a, f0, f1, extra in ops:
            if kind == "mmap":
                pi = a % len(procs)
                if not procs[pi].alive:
                    continue
                length = [PAGE, 7 * PAGE, HP, HP + PAGE, 3 * HP][extra % 5]
                areas.append((pi, procs[pi].mmap(length), length))
                continue
            if kind == "fork":
                if procs[a % len(procs)].alive and len(procs) < 4:
                    procs.append(procs[a % len(procs)].fork())
                continue
            if kind == "run":
                m.run(seconds=[0.01, 1, 10][extra % 3])
                continue
            if kind == "exit":
                if len(procs) > 1 and procs[-1].alive:
                    procs[-1].exit()
                continue
            pi, addr, length = areas[a % len(areas)]
            p = procs[pi]
            pages = length // PAGE
            lo = int(f0 * (pages - 1))
            n = max(1, int(f1 * (pages - lo)))
            start, size = addr + lo * PAGE, n * PAGE
            try:
                if kind == "write":
                    p.write(start, size, None if extra % 3 == 0 else extra)
                elif kind == "read":
                    outcomes.append(p.read(start, size).tobytes())
                elif kind == "madvise":
                    p.madvise(start, size, ADVICE[extra % len(ADVICE)])
                elif kind == "munmap":
                    p.munmap(start, size)
                elif kind == "mprotect":
                    p.mprotect(start, size, PROT_READ | (PROT_WRITE if extra % 2 else 0))
            except (OSError, thpcore.SegmentationFault) as e:
                outcomes.append((kind, type(e).__name__, getattr(e, "errno", None)))
            m.check()
        return (m.state_hash(), dict(m.vmstat), dict(m.events), outcomes,
                [(p.mm.anon_rss, p.mm.swap_ents, p.alive) for p in procs])
    finally:
        memory.FAST_RANGE_WALKS = saved


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=40), memcg_max=st.sampled_from(["", "24M"]),
       mthp=st.booleans())
def test_fast_path_equals_per_region_path(ops, memcg_max, mthp):
    assert _execute(ops, True, memcg_max, mthp) == _execute(ops, False, memcg_max, mthp)


def test_fault_range_crosses_a_gib_and_stops_where_python_must_decide():
    m = thpcore.Machine("64M", seed=0, transparent_hugepage="madvise")
    p = m.spawn()
    addr = p.mmap(4 * HP, addr=GIB - 2 * HP)
    p.write(addr, 4 * HP, 7)                    # small pages: tables in both GiBs
    pt = m.page_tables
    below, above = p.mm.pmd_dir[0], p.mm.pmd_dir[1]
    pt.reset_stats()
    out = np.zeros(2 * 512, dtype=np.uint32)
    vpn = addr >> 12
    assert pt.fault_range(below, vpn, vpn + 1024, False, True, 0, 0, out) == 0
    assert (out == 7).all() and pt.get_stats()["stopped_vpn"] == vpn + 1024
    # A range over two GiBs is refused before any work is done.
    with pytest.raises(ValueError, match="one GiB"):
        pt.fault_range(below, vpn, vpn + 2048, False, True, 0, 0)
    with pytest.raises(ValueError, match="512"):
        pt.fault_range(np.zeros(4, dtype=np.uint64), vpn, vpn + 1, False, True, 0, 0)
    # A none PMD stops the walk at its region: THP-at-fault is the kernel model's decision.
    fresh = p.mmap(2 * HP)
    arr, _ = p.mm.pmd_slot(fresh)
    pt.reset_stats()
    assert pt.fault_range(arr, fresh >> 12, (fresh >> 12) + 1024, True, True, 0, 1) \
        == _engine.PY_FAULT_SLOW
    assert pt.get_stats()["stopped_vpn"] == fresh >> 12
    m.check()


def test_corrupt_pmd_entry_is_refused_not_followed():
    m = thpcore.Machine("64M", seed=0)
    p = m.spawn()
    addr = p.mmap(2 * HP)
    p.write(addr, 2 * HP, 1)
    arr = p.mm.pmd_dir[addr >> 30]
    i = (addr >> 21) & 511
    good = int(arr[i])
    arr[i] = np.uint64((12345 << 32) | _engine.PY_PMD_KIND_TABLE)    # a table id not in use
    with pytest.raises(RuntimeError, match="corrupt PMD"):
        p.write(addr, PAGE, 2)
    with pytest.raises(RuntimeError, match="corrupt PMD"):
        p.madvise(addr, PAGE, MADV_DONTNEED)
    arr[i] = np.uint64(good)
    m.check()
    assert p.read(addr, PAGE)[0] == 1


def _overcommitted_writes(fast):
    saved = memory.FAST_RANGE_WALKS
    memory.FAST_RANGE_WALKS = fast
    try:
        m = thpcore.Machine("64M", swap="64M", seed=0, transparent_hugepage="never")
        p = m.spawn()
        addr = p.mmap(80 << 20)
        p.write(addr, 80 << 20, 5)
        p.write(addr, 80 << 20, 6)              # swaps earlier pages back in, others out
        data = p.read(addr, 80 << 20)
        m.check()
        return m.state_hash(), dict(m.vmstat), data
    finally:
        memory.FAST_RANGE_WALKS = saved


def test_oom_inside_a_range_walk_reclaims_and_goes_on():
    """Writes larger than memory: the walk stops at the page whose allocation failed, reclaim
    swaps out, the walk resumes from that page; same machine as the per-region path."""
    fast, slow = _overcommitted_writes(True), _overcommitted_writes(False)
    assert (fast[2] == 6).all()
    assert fast[1]["pswpout"] > 0 and fast[1]["allocstall_normal"] > 0
    assert fast[0] == slow[0] and fast[1] == slow[1]
