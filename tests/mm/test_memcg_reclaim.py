"""memcg limits and files, reclaim (kswapd, direct, memcg), the OOM killer, and the
deferred-split / underused-THP shrinker."""

import errno

import pytest

import thpcore
from thpcore import MADV_DONTNEED, MADV_HUGEPAGE, OOMKilled

from conftest import unchanged

MB, HP = 1 << 20, 2 << 20
CG = "/sys/fs/cgroup"


def stride_workload(max_ptes_none, shrink_underused=1):
    """The underused-THP shrinker's case: memory.max 20M, a 40M working set touched with a
    50K stride under enabled=always (every region gets a mostly-zero THP)."""
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="always")
    m.thp.shrink_underused = shrink_underused
    m.thp.khugepaged.max_ptes_none = max_ptes_none
    m.cgroups.create("test")
    m.sysfs.write(f"{CG}/test/memory.max", "20M")
    p = m.spawn(name="stride", cgroup="test")
    a = p.mmap(40 * MB)
    try:
        for off in range(0, 40 * MB, 50 * 1024):
            p.write(a + off, 1)
        survived = True
    except OOMKilled:
        survived = False
    m.check()
    return m, p, survived


@pytest.mark.parametrize("max_ptes_none, survives", [(511, False), (471, False), (470, True),
                                                     (256, True), (0, True)])
def test_underused_shrinker_keeps_the_cgroup_alive_at_max_ptes_none_470(max_ptes_none, survives):
    m, p, survived = stride_workload(max_ptes_none)
    assert survived == survives
    events = dict(line.split() for line in m.sysfs.read(f"{CG}/test/memory.events").splitlines())
    assert int(events["oom_kill"]) == (0 if survives else 1)
    if survives:
        assert m.vmstat["thp_underused_split_page"] > 0
        assert int(m.sysfs.read(f"{CG}/test/memory.current")) <= 20 * MB
    else:
        assert not p.alive and p.exit_reason == "oom"
        with pytest.raises(ProcessLookupError) as e:
            p.read(0, 1)
        assert e.value.errno == errno.ESRCH


def test_without_the_shrinker_the_stride_workload_is_oom_killed():
    m, p, survived = stride_workload(256, shrink_underused=0)
    assert not survived and m.vmstat["oom_kill"] == 1


def test_memcg_files_and_limits():
    m = thpcore.Machine("1G", seed=0)
    m.cgroups.create("batch")
    m.cgroups.create("batch/low")
    with pytest.raises(FileExistsError):
        m.cgroups.create("batch")
    with pytest.raises(FileNotFoundError):
        m.cgroups.create("nope/child")
    assert m.sysfs.read(f"{CG}/batch/memory.max") == "max\n"
    assert m.sysfs.write(f"{CG}/batch/memory.max", "64M\n") == 4
    assert m.sysfs.read(f"{CG}/batch/memory.max") == f"{64 * MB}\n"
    m.sysfs.write(f"{CG}/batch/memory.high", "48M")
    p = m.spawn(cgroup="batch/low")
    a = p.mmap(8 * MB)
    p.madvise(a, 8 * MB, MADV_HUGEPAGE)
    p.write(a, 8 * MB)
    assert m.sysfs.read(f"{CG}/batch/memory.current") == f"{8 * MB}\n"
    assert m.sysfs.read(f"{CG}/batch/low/memory.current") == f"{8 * MB}\n"
    stat = dict(line.split() for line in m.sysfs.read(f"{CG}/batch/memory.stat").splitlines())
    assert int(stat["anon"]) == 8 * MB and int(stat["anon_thp"]) == 8 * MB
    assert int(stat["thp_fault_alloc"]) == 4
    for bad in ("lots", "-1", "12X"):
        err = unchanged(m, lambda: m.sysfs.write(f"{CG}/batch/memory.max", bad), OSError)
        assert err.errno == errno.EINVAL
    err = unchanged(m, lambda: m.sysfs.write(f"{CG}/batch/memory.current", "1"), OSError)
    assert err.errno == errno.EACCES
    p.exit()
    assert m.sysfs.read(f"{CG}/batch/memory.current") == "0\n"
    m.check()


def test_thp_charge_failure_falls_back_to_small_pages():
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="always")
    m.cgroups.create("small")
    m.sysfs.write(f"{CG}/small/memory.max", "3M")
    p = m.spawn(cgroup="small")
    a = p.mmap(4 * MB)
    p.write(a, MB)                                    # region 0: a THP (2M) fits
    p.write(a + 2 * MB, 4096)                         # region 1: a second THP would not fit
    assert p.smaps_rollup()["AnonHugePages"] == 2048
    assert m.vmstat["thp_fault_fallback_charge"] == 1 and m.vmstat["thp_fault_fallback"] == 1
    assert p.smaps_rollup()["Rss"] == 2048 + 4
    m.check()


def test_collapse_charge_failure_is_ebusy():
    m = thpcore.Machine("1G", seed=0)
    m.cgroups.create("c")
    m.sysfs.write(f"{CG}/c/memory.max", "1M")
    p = m.spawn(cgroup="c")
    a = p.mmap(HP)
    p.write(a, 4096)
    with pytest.raises(OSError) as e:
        p.madvise(a, HP, thpcore.MADV_COLLAPSE)
    assert e.value.errno == errno.EBUSY
    assert p.smaps_rollup()["AnonHugePages"] == 0
    m.check()


def test_lowering_memory_max_reclaims_to_swap():
    m = thpcore.Machine("1G", swap="256M", seed=0, transparent_hugepage="never")
    m.cgroups.create("c")
    p = m.spawn(cgroup="c")
    a = p.mmap(32 * MB)
    p.write(a, 32 * MB)
    words = p.read(a, 32 * MB)
    m.sysfs.write(f"{CG}/c/memory.max", "16M")
    assert int(m.sysfs.read(f"{CG}/c/memory.current")) <= 16 * MB
    assert p.smaps_rollup()["Swap"] >= 16 * 1024
    assert m.vmstat["pswpout"] >= 4096
    m.check()
    assert (p.read(a, 32 * MB) == words).all()          # swaps in and out within 16M
    assert int(m.sysfs.read(f"{CG}/c/memory.current")) <= 16 * MB
    m.check()


def test_memcg_oom_kills_the_largest_task_in_the_cgroup():
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="never")
    m.cgroups.create("c")
    m.sysfs.write(f"{CG}/c/memory.max", "16M")
    big = m.spawn(name="big", cgroup="c")
    small = m.spawn(name="small", cgroup="c")
    outsider = m.spawn(name="outsider")
    b = big.mmap(12 * MB)
    big.write(b, 12 * MB)
    s = small.mmap(8 * MB)
    small.write(s, 2 * MB)
    o = outsider.mmap(64 * MB)
    outsider.write(o, 64 * MB)
    small.write(s, 8 * MB)                           # over the limit: no swap, so OOM
    assert not big.alive and big.exit_reason == "oom"
    assert small.alive and outsider.alive
    assert m.vmstat["oom_kill"] == 1
    m.check()


def test_global_oom_when_memory_runs_out():
    m = thpcore.Machine("64M", seed=0)
    hog = m.spawn(name="hog")
    a = hog.mmap(256 * MB)
    with pytest.raises(OOMKilled):
        hog.write(a, 256 * MB)
    assert not hog.alive and m.vmstat["oom_kill"] == 1
    assert m.vmstat["allocstall_normal"] >= 1
    m.check()


def test_kswapd_reclaims_to_the_high_watermark():
    m = thpcore.Machine("256M", swap="256M", seed=0)
    p = m.spawn()
    zone = m.page_alloc.zone
    size = (zone.nr_free_pages - zone.watermarks()[1] + 64) * 4096
    a = p.mmap(size)
    p.write(a, size)
    assert m.kswapd_wake_pending
    p.madvise(a, size, thpcore.MADV_COLD)               # make the pages reclaimable now
    m.run(ms=1)
    assert zone.nr_free_pages > zone.watermarks()[2]
    assert m.cpu_ns.get("kswapd", 0) > 0 and m.vmstat["pswpout"] > 0
    m.check()


def test_partially_mapped_thps_are_split_by_reclaim():
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="always")
    p = m.spawn()
    a = p.mmap(8 * MB)
    p.write(a, 8 * MB)
    for i in range(4):
        p.madvise(a + i * HP, HP // 2, MADV_DONTNEED)   # half of each THP unmapped
    assert m.vmstat["thp_deferred_split_page"] == 4
    free = m.page_alloc.zone.nr_free_pages
    from thpcore.mm.vmscan import shrink_node
    freed = shrink_node(m, 10_000)
    assert freed == 4 * 256 and m.page_alloc.zone.nr_free_pages == free + 4 * 256
    assert m.vmstat["thp_split_page"] == 4
    m.check()


def test_memory_high_reclaims_the_excess_after_the_fault():
    m = thpcore.Machine("1G", swap="256M", seed=0, transparent_hugepage="never")
    m.cgroups.create("h")
    m.sysfs.write(f"{CG}/h/memory.high", "8M")
    p = m.spawn(cgroup="h")
    a = p.mmap(16 * MB)
    p.write(a, 16 * MB)
    p.madvise(a, 16 * MB, thpcore.MADV_COLD)
    p.write(a, 4096)                                   # the next return to user space reclaims
    assert int(m.sysfs.read(f"{CG}/h/memory.current")) <= 8 * MB
    events = dict(line.split() for line in m.sysfs.read(f"{CG}/h/memory.events").splitlines())
    assert int(events["high"]) >= 1 and int(events["oom_kill"]) == 0
    m.check()


def test_memory_reclaim_swaps_out_what_is_asked_and_eagain_when_it_cannot():
    m = thpcore.Machine("256M", swap="64M", seed=0, transparent_hugepage="never")
    m.cgroups.create("job")
    p = m.spawn(cgroup="job")
    other = m.spawn()
    a, b = p.mmap(32 * MB), other.mmap(8 * MB)
    p.write(a, 32 * MB, 3)
    other.write(b, 8 * MB, 4)
    m.sysfs.write(f"{CG}/job/memory.reclaim", "8M")
    current = int(m.sysfs.read(f"{CG}/job/memory.current"))
    assert 16 * MB <= current <= 24 * MB                 # at least 8M went, in batches
    assert m.vmstat["pswpout"] * 4096 == 32 * MB - current
    assert other.mm.swap_ents == 0                       # only the cgroup's pages
    assert (p.read(a, 32 * MB) == 3).all()               # swapped pages read back
    # More than the cgroup holds: everything goes to swap, then EAGAIN.
    with pytest.raises(BlockingIOError) as info:
        m.sysfs.write(f"{CG}/job/memory.reclaim", "1G swappiness=60")
    assert info.value.errno == errno.EAGAIN
    assert m.sysfs.read(f"{CG}/job/memory.current") == "0\n"
    assert m.page_tables.swap_used == 32 * MB // 4096 and other.mm.swap_ents == 0
    m.check()
    for bad in ("-1", "lots", "1M swappiness=201", "1M swappiness=-1", "1M other=1", "swappiness=1"):
        err = unchanged(m, lambda: m.sysfs.write(f"{CG}/job/memory.reclaim", bad), OSError)
        assert err.errno == errno.EINVAL
    err = unchanged(m, lambda: m.sysfs.read(f"{CG}/job/memory.reclaim"), OSError)
    assert err.errno == errno.EACCES
    m.sysfs.write(f"{CG}/job/memory.reclaim", "0")          # nothing asked, nothing done
