"""MADV_FREE's lazyfree pages: reclaim discards them (with or without swap) unless they were
written again, in which case they become swap-backed and stay. Expected figures are the live
6.18 kernel's (probed with a v1 memcg limit and with MADV_PAGEOUT; see fidelity.py for the
differential scenarios)."""

import numpy as np

import thpcore
from thpcore import (MADV_FREE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT)

MB = 1 << 20
PAGE = 4096


def _smaps(p, addr, length):
    out = dict.fromkeys(("Rss", "AnonHugePages", "LazyFree", "Swap"), 0)
    for e in p.smaps():
        if e["end"] > addr and e["start"] < addr + length:
            for k in out:
                out[k] += e[k] << 10           # smaps counts kB
    return out


def test_madv_free_marks_lazyfree_and_a_write_unmarks_it_in_smaps():
    m = thpcore.Machine("64M", seed=0)
    p = m.spawn()
    a = p.mmap(4 * MB)
    p.madvise(a, 4 * MB, MADV_NOHUGEPAGE)
    p.write(a, 4 * MB, 1)
    p.madvise(a, 2 * MB, MADV_FREE)
    assert m.vmstat["pglazyfree"] == 512
    assert _smaps(p, a, 4 * MB)["LazyFree"] == 2048 << 10
    p.write(a, PAGE, 9)                             # dirty again: no longer counted
    assert _smaps(p, a, 4 * MB)["LazyFree"] == (2048 - 4) << 10
    assert p.read(a + PAGE, PAGE)[0] == 1           # not reclaimed yet: the data is still there
    m.check()


def test_memcg_limit_reclaim_discards_clean_lazyfree_pages_without_swap():
    """Live (v1 memcg, limit lowered below what can be freed): 8191 pglazyfreed, Rss 32 MiB
    + 4 KiB, LazyFree 0, only the rewritten page of the freed half is non-zero."""
    m = thpcore.Machine("256M", seed=0)
    m.cgroups.create("box")
    p = m.spawn(cgroup="box")
    a = p.mmap(64 * MB)
    p.madvise(a, 64 * MB, MADV_NOHUGEPAGE)
    p.write(a, 64 * MB, 1)
    p.madvise(a + 32 * MB, 32 * MB, MADV_FREE)
    p.write(a + 40 * MB, PAGE, 9)
    # Just what stays: everything clean must go (the live run lowered a v1 limit below that,
    # reclaimed all it could, then returned EBUSY; v2's memory.max would OOM-kill instead).
    m.sysfs.write("/sys/fs/cgroup/box/memory.max", str(32 * MB + PAGE))
    assert p.alive
    assert m.vmstat["pglazyfree"] == 8192 and m.vmstat["pglazyfreed"] == 8191
    s = _smaps(p, a, 64 * MB)
    assert s["Rss"] == 32 * MB + PAGE and s["LazyFree"] == 0
    vals = p.read(a + 32 * MB, 32 * MB)
    assert np.count_nonzero(vals) == 1 and vals[(8 * MB) // PAGE] == 9
    m.check()


def test_global_pressure_without_swap_takes_lazyfree_pages_instead_of_oom():
    m = thpcore.Machine("64M", seed=0, transparent_hugepage="never")
    cache = m.spawn()
    a = cache.mmap(32 * MB)
    cache.write(a, 32 * MB, 7)
    cache.madvise(a, 32 * MB, MADV_FREE)
    cache.write(a, PAGE, 8)                         # one live entry in the cache
    other = m.spawn()
    b = other.mmap(40 * MB)
    other.write(b, 40 * MB, 1)                      # needs most of the freed memory
    assert cache.alive and other.alive and m.vmstat["oom_kill"] == 0
    freed = m.vmstat["pglazyfreed"]
    assert freed > 0
    vals = cache.read(a, 32 * MB)
    assert vals[0] == 8                             # the rewritten page survived
    assert np.count_nonzero(vals == 7) == 8191 - freed
    assert np.count_nonzero(vals == 0) == freed     # discarded pages read as zeroes
    m.check()


def test_lazyfree_thps_under_reclaim_clean_discarded_dirty_kept_pte_mapped():
    """Live (v1 memcg limit): a clean lazyfree THP is discarded after a PMD split (split_pmd
    +1, pglazyfreed +512); one written since is PMD-split and kept whole (no split_page)."""
    for dirty in (False, True):
        m = thpcore.Machine("1G", seed=0, transparent_hugepage="madvise")
        m.cgroups.create("box")
        p = m.spawn(cgroup="box")
        a = p.mmap(4 * MB)
        p.madvise(a, 4 * MB, MADV_HUGEPAGE)
        p.write(a, 4 * MB, 1)
        p.madvise(a, 2 * MB, MADV_FREE)
        if dirty:
            p.write(a + 8192, PAGE, 9)
        before = dict(m.vmstat)
        m.sysfs.write("/sys/fs/cgroup/box/memory.max", str(3 * MB))
        d = {k: m.vmstat[k] - before[k] for k in ("pglazyfreed", "thp_split_pmd", "thp_split_page")}
        if dirty:
            # The kept THP pushes the cgroup over 3M: v2 memory.max then OOM-kills, where v1
            # returned EBUSY. The page tables were what the live kernel showed before that.
            assert d == {"pglazyfreed": 0, "thp_split_pmd": 1, "thp_split_page": 0}
            assert not p.alive
        else:
            assert d == {"pglazyfreed": 512, "thp_split_pmd": 1, "thp_split_page": 0}
            assert _smaps(p, a, 4 * MB) == {"Rss": 2 * MB, "AnonHugePages": 2 * MB, "LazyFree": 0, "Swap": 0}
            assert not np.any(p.read(a, 2 * MB))
        m.check()


def test_shared_pages_are_not_made_lazyfree():
    m = thpcore.Machine("64M", seed=0, transparent_hugepage="never")
    p = m.spawn()
    a = p.mmap(MB)
    p.write(a, MB, 1)
    child = p.fork()
    p.madvise(a, MB, MADV_FREE)
    assert m.vmstat["pglazyfree"] == 0
    p.madvise(a, MB, MADV_PAGEOUT)                  # nothing to discard, no swap
    assert (p.read(a, MB) == 1).all() and (child.read(a, MB) == 1).all()
    m.check()


def test_compaction_carries_the_lazyfree_mark():
    m = thpcore.Machine("64M", seed=0, transparent_hugepage="never")
    keep, filler = m.spawn(), m.spawn()
    a, b = keep.mmap(8 * MB), filler.mmap(8 * MB)
    for i in range(0, 8 * MB, 64 * 1024):          # interleave the two processes' pages
        keep.write(a + i, 64 * 1024, 3)
        filler.write(b + i, 64 * 1024, 4)
    keep.madvise(a, 8 * MB, MADV_FREE)
    filler.exit()
    lazy = _smaps(keep, a, 8 * MB)["LazyFree"]
    m.procfs.write("/proc/sys/vm/compact_memory", "1")
    assert m.vmstat["pgmigrate_success"] > 0
    assert _smaps(keep, a, 8 * MB)["LazyFree"] == lazy == 8 * MB
    keep.madvise(a, 8 * MB, MADV_PAGEOUT)
    assert m.vmstat["pglazyfreed"] == 2048 and _smaps(keep, a, 8 * MB)["Rss"] == 0
    m.check()


def test_a_freed_and_reused_frame_is_not_lazyfree():
    m = thpcore.Machine("64M", seed=0, transparent_hugepage="never")
    p = m.spawn()
    a = p.mmap(MB)
    p.write(a, MB, 1)
    p.madvise(a, MB, MADV_FREE)
    p.madvise(a, MB, MADV_PAGEOUT)                  # discarded: frames back in the buddy
    q = m.spawn()
    b = q.mmap(16 * MB)
    q.write(b, 16 * MB, 2)                          # reuses them
    assert _smaps(q, b, 16 * MB)["LazyFree"] == 0
    q.madvise(b, 16 * MB, MADV_PAGEOUT)
    assert (q.read(b, 16 * MB) == 2).all()
    m.check()
