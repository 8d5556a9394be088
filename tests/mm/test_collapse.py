"""MADV_COLLAPSE, khugepaged and process_madvise: limits, range rules, errno, permissions,
counters, events, and the 2022 RFC profile."""

import errno

import pytest

import thpcore
from thpcore import (MADV_COLD, MADV_COLLAPSE, MADV_DONTNEED, MADV_F_COLLAPSE_DEFRAG,
                     MADV_F_COLLAPSE_LIMITS, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT,
                     PR_SET_THP_DISABLE, PR_THP_DISABLE_EXCEPT_ADVISED)
from thpcore.mm.khugepaged import ScanResult

from conftest import unchanged

PAGE, HPAGE, MB = 4096, 2 << 20, 1 << 20


@pytest.fixture
def m():
    m = thpcore.Machine("1G", swap="64M", seed=0)
    m.thp.khugepaged.scan_sleep_millisecs = 10
    m.thp.khugepaged.alloc_sleep_millisecs = 10
    return m


def ahp(p):
    return p.smaps_rollup()["AnonHugePages"]


def advised(p, size=HPAGE):
    a = p.mmap(size)
    p.madvise(a, size, MADV_HUGEPAGE)
    return a


# ---- khugepaged limits: count == limit collapses, limit + 1 does not --------------------------

@pytest.mark.parametrize("limit", [0, 1, 64, 510])
@pytest.mark.parametrize("over", [False, True])
def test_max_ptes_none_boundary(m, limit, over):
    m.thp.khugepaged.max_ptes_none = limit
    p = m.spawn()
    a = p.mmap(HPAGE)
    present = 512 - limit - (1 if over else 0)
    p.write(a, present * PAGE)
    p.madvise(a, HPAGE, MADV_HUGEPAGE)
    before = m.vmstat["thp_scan_exceed_none_pte"]
    m.khugepaged.wait_full_scans(2)
    assert ahp(p) == (0 if over else 2048)
    assert m.vmstat["thp_scan_exceed_none_pte"] - before == (2 if over else 0)
    m.check()


@pytest.mark.parametrize("over", [False, True])
def test_max_ptes_swap_boundary(m, over):
    m.thp.enabled = "never"
    p = m.spawn()
    a = p.mmap(HPAGE)
    p.write(a, HPAGE)
    n = m.thp.khugepaged.max_ptes_swap + (1 if over else 0)
    p.madvise(a, n * PAGE, MADV_PAGEOUT)
    m.thp.enabled = "madvise"
    p.madvise(a, HPAGE, MADV_HUGEPAGE)
    m.khugepaged.wait_full_scans(2)
    assert ahp(p) == (0 if over else 2048)
    assert m.vmstat["thp_scan_exceed_swap_pte"] == (2 if over else 0)
    assert p.smaps_rollup()["Swap"] == (n * 4 if over else 0)
    m.check()


@pytest.mark.parametrize("over", [False, True])
def test_max_ptes_shared_boundary(m, over):
    p = m.spawn()
    a = advised(p)
    p.write(a, HPAGE)
    c = p.fork()
    shared = m.thp.khugepaged.max_ptes_shared + (1 if over else 0)
    c.write(a, (512 - shared) * PAGE)        # CoW the rest: the child's PMD is split
    assert ahp(c) == 0
    m.khugepaged.wait_full_scans(2)
    assert ahp(c) == (0 if over else 2048)
    assert ahp(p) == 2048
    assert m.vmstat["thp_scan_exceed_share_pte"] >= (1 if over else 0)
    m.check()


def test_khugepaged_needs_a_referenced_page(m):
    p = m.spawn()
    a = p.mmap(HPAGE)
    p.write(a, PAGE)                          # a 4 KiB page (not advised yet)
    p.madvise(a, HPAGE, MADV_COLD)            # clears the accessed bit
    p.madvise(a, HPAGE, MADV_HUGEPAGE)
    m.khugepaged.wait_full_scans(2)
    assert ahp(p) == 0
    ev = m.collapse_events()
    assert (ev["result"] == ScanResult.SCAN_LACK_REFERENCED_PAGE).any()
    p.read(a, PAGE)                           # young again
    m.khugepaged.wait_full_scans(2)
    assert ahp(p) == 2048


def test_khugepaged_counters_and_budget(m):
    p = m.spawn()
    a = p.mmap(32 * HPAGE)
    for i in range(32):
        p.write(a + i * HPAGE, PAGE)
    p.madvise(a, 32 * HPAGE, MADV_HUGEPAGE)
    k = m.thp.khugepaged
    # pages_to_scan = 4096 = 8 regions per wake-up, and every collapse ends the pass's walk of
    # this mm early (the lock is dropped): one collapse per scan_mm_slot call.
    m.run(ms=0)
    assert k.pages_collapsed >= 1
    m.khugepaged.wait_full_scans(1)
    assert k.pages_collapsed == 32 and ahp(p) == 32 * 2048
    assert m.vmstat["thp_collapse_alloc"] == 32
    assert m.vmstat["thp_collapse_alloc_failed"] == 0
    assert p.smaps_rollup()["Rss"] == 32 * 2048        # bloat: holes filled
    ev = m.collapse_events()
    ok = ev[ev["result"] == ScanResult.SCAN_SUCCEED]
    assert len(ok) == 32 and set(ok["context"]) == {0} and set(ok["pid"]) == {p.pid}
    assert (ok["none_or_zero"] == 511).all()


def test_khugepaged_allocation_failure_sleeps_and_counts(m):
    pfns = m.kernel_alloc_bulk(0, "unmovable", 1 << 20)     # pins compaction cannot move
    m.kernel_free_bulk([x for x in pfns if x % 512 != 3][:len(pfns) // 4], 0)
    m.kernel_alloc_bulk(9, "unmovable", 10_000)
    p = m.spawn()
    a = p.mmap(HPAGE)
    p.write(a, PAGE)
    p.madvise(a, HPAGE, MADV_HUGEPAGE)
    t0 = m.clock_ns
    m.run(ms=1)
    assert m.vmstat["thp_collapse_alloc_failed"] >= 1
    assert m.clock_ns - t0 >= 10_000_000 or m.vmstat["thp_collapse_alloc_failed"] >= 1


def test_wait_full_scans_without_work_raises(m):
    with pytest.raises(TimeoutError):
        m.khugepaged.wait_full_scans(1)


def test_khugepaged_skips_a_process_with_thp_disabled(m):
    p = m.spawn()
    a = advised(p)
    p.write(a, PAGE)
    p.madvise(a, PAGE, MADV_DONTNEED)
    p.write(a + PAGE, PAGE)
    p.prctl(PR_SET_THP_DISABLE, 1)
    m.khugepaged.wait_full_scans(2)
    assert ahp(p) == 0


# ---- MADV_COLLAPSE semantics -------------------------------------------------------------------

def test_collapse_ignores_sysfs_and_limits(m):
    m.thp.enabled = "never"
    m.thp.khugepaged.max_ptes_none = 0
    p = m.spawn()
    a = p.mmap(HPAGE)
    p.write(a, PAGE)
    p.madvise(a, HPAGE, MADV_COLLAPSE)
    assert ahp(p) == 2048 and p.smaps_rollup()["Rss"] == 2048
    assert m.thp.khugepaged.pages_collapsed == 0 and m.vmstat["thp_collapse_alloc"] == 1
    assert not any("hg" in s["VmFlags"] for s in p.smaps())     # no VMA flag change
    m.check()


@pytest.mark.parametrize("setup, code", [
    ("nohugepage", errno.EINVAL), ("prctl", errno.EINVAL), ("untouched_vma", errno.EINVAL),
    ("small_vma", errno.EINVAL), ("pmd_none", errno.EINVAL),
])
def test_collapse_refusals(m, setup, code):
    p = m.spawn()
    a = p.mmap(4 * HPAGE if setup != "small_vma" else HPAGE - PAGE)
    if setup == "nohugepage":
        p.write(a, PAGE)
        p.madvise(a, 4 * HPAGE, MADV_NOHUGEPAGE)
    elif setup == "prctl":
        p.write(a, PAGE)
        p.prctl(PR_SET_THP_DISABLE, 1)
    elif setup == "small_vma":
        p.write(a, PAGE)
    elif setup == "pmd_none":
        p.write(a + 3 * HPAGE, PAGE)          # anon_vma exists, region 0's PMD is none
    length = 4 * HPAGE if setup != "small_vma" else HPAGE - PAGE
    err = unchanged(m, lambda: p.madvise(a, length, MADV_COLLAPSE), OSError)
    assert err.errno == code


def test_collapse_under_except_advised_prctl_is_allowed(m):
    p = m.spawn()
    a = p.mmap(HPAGE)
    p.write(a, PAGE)
    p.prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED)
    p.madvise(a, HPAGE, MADV_COLLAPSE)
    assert ahp(p) == 2048


def test_collapse_range_rounding(m):
    p = m.spawn()
    a = p.mmap(4 * HPAGE)
    p.write(a, 4 * HPAGE)
    p.madvise(a, PAGE, MADV_COLLAPSE)                      # hstart == hend: 0, nothing done
    assert ahp(p) == 0
    with pytest.raises(OSError) as e:                      # inside one region: hend < hstart
        p.madvise(a + PAGE, 2 * PAGE, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    p.madvise(a + PAGE, 4 * HPAGE - 2 * PAGE, MADV_COLLAPSE)   # only whole regions: 1..2
    assert ahp(p) == 2 * 2048
    p.madvise(a, 4 * HPAGE, MADV_COLLAPSE)                 # PMD-mapped ones count as success
    assert ahp(p) == 4 * 2048
    m.check()


def test_collapse_aborts_at_a_pmd_none_region_and_reports_the_last_failure(m):
    p = m.spawn()
    a = p.mmap(3 * HPAGE)
    p.write(a, PAGE)
    p.write(a + 2 * HPAGE, PAGE)
    with pytest.raises(OSError) as e:
        p.madvise(a, 3 * HPAGE, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    assert ahp(p) == 2048                                  # region 0 done, region 2 never tried
    m.check()


def test_collapse_over_a_hole_collapses_both_sides_then_enomem(m):
    p = m.spawn()
    a = p.mmap(3 * HPAGE)
    p.write(a, 3 * HPAGE)
    p.munmap(a + HPAGE, HPAGE)
    with pytest.raises(OSError) as e:
        p.madvise(a, 3 * HPAGE, MADV_COLLAPSE)
    assert e.value.errno == errno.ENOMEM
    assert ahp(p) == 2 * 2048


def test_collapse_swaps_in_and_copies_shared_pages(m):
    m.thp.enabled = "never"
    p = m.spawn()
    a = p.mmap(HPAGE)
    p.write(a, HPAGE)
    words = p.read(a, HPAGE)
    p.madvise(a, 100 * PAGE, MADV_PAGEOUT)
    c = p.fork()
    c.write(a + HPAGE - PAGE, PAGE, value=1)               # one writable page in the child
    c.madvise(a, HPAGE, MADV_COLLAPSE)
    assert ahp(c) == 2048 and c.smaps_rollup()["Swap"] == 0
    expect = words.copy()
    expect[-1] = 1
    assert (c.read(a, HPAGE) == expect).all()
    assert (p.read(a, HPAGE) == words).all()
    m.check()


def test_collapse_allocation_failure_is_enomem(m):
    pfns = m.kernel_alloc_bulk(0, "unmovable", 1 << 20)     # pins compaction cannot move
    m.kernel_free_bulk([x for x in pfns if x % 512 != 3], 0)
    m.kernel_alloc_bulk(9, "unmovable", 10_000)
    p = m.spawn()
    a = p.mmap(HPAGE)
    p.write(a, PAGE)
    with pytest.raises(OSError) as e:
        p.madvise(a, HPAGE, MADV_COLLAPSE)
    assert e.value.errno == errno.ENOMEM
    assert m.vmstat["thp_collapse_alloc_failed"] == 1
    m.check()


# ---- process_madvise and pidfds -----------------------------------------------------------------

def test_process_madvise_collapses_another_process(m):
    target = m.spawn(name="db", uid=1000)
    a = target.mmap(2 * HPAGE)
    target.write(a, 2 * HPAGE)
    agent = m.spawn(name="uhugepaged", caps={"CAP_SYS_NICE", "CAP_SYS_PTRACE"})
    fd = agent.pidfd_open(target.pid)
    assert agent.process_madvise(fd, [(a, HPAGE), (a + HPAGE, HPAGE)], MADV_COLLAPSE) == 2 * HPAGE
    assert ahp(target) == 4096
    ev = m.collapse_events()
    assert set(ev["pid"]) == {target.pid} and set(ev["context"]) == {1}
    m.check()


def test_process_madvise_partial_result(m):
    target = m.spawn()
    a = target.mmap(3 * HPAGE)
    target.write(a, HPAGE)
    target.write(a + 2 * HPAGE, PAGE)
    agent = m.spawn()
    fd = agent.pidfd_open(target.pid)
    # The second iovec is a never-touched region: EINVAL, reported only as a short count.
    done = agent.process_madvise(fd, [(a, HPAGE), (a + HPAGE, HPAGE), (a + 2 * HPAGE, HPAGE)],
                                 MADV_COLLAPSE)
    assert done == HPAGE
    assert ahp(target) == 2048
    with pytest.raises(OSError) as e:                      # nothing done: the error itself
        agent.process_madvise(fd, [(a + HPAGE, HPAGE)], MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("case, code", [
    ("flags", errno.EINVAL), ("too_many", errno.EINVAL), ("remote_dontneed", errno.EINVAL),
    ("bad_fd", errno.EBADF), ("dead", errno.ESRCH), ("no_cap_sys_nice", errno.EPERM),
    ("other_uid", errno.EACCES),
])
def test_process_madvise_errors(m, case, code):
    target = m.spawn(uid=1000)
    a = target.mmap(HPAGE)
    target.write(a, HPAGE)
    caller = m.spawn(uid=1000, caps={"CAP_SYS_NICE"})
    kwargs, vec, advice = {}, [(a, HPAGE)], MADV_COLLAPSE
    fd = caller.pidfd_open(target.pid)
    if case == "flags":
        kwargs["flags"] = 1
    elif case == "too_many":
        vec = [(a, 0)] * 1025
    elif case == "remote_dontneed":
        advice = MADV_DONTNEED
    elif case == "bad_fd":
        fd = 99
    elif case == "dead":
        target.exit()
    elif case == "no_cap_sys_nice":
        caller = m.spawn(uid=1000)
        fd = caller.pidfd_open(target.pid)
    elif case == "other_uid":
        caller = m.spawn(uid=2000, caps={"CAP_SYS_NICE"})
        fd = caller.pidfd_open(target.pid)
    err = unchanged(m, lambda: caller.process_madvise(fd, vec, advice, **kwargs), OSError)
    assert err.errno == code


def test_process_madvise_self_needs_no_privilege(m):
    p = m.spawn(uid=1000)
    a = p.mmap(HPAGE)
    p.write(a, PAGE)
    fd = p.pidfd_open(p.pid)
    assert p.process_madvise(fd, [(a, HPAGE)], MADV_DONTNEED) == HPAGE   # any advice on self


def test_pidfd_open_errors(m):
    p = m.spawn()
    for pid, flags, code in [(0, 0, errno.EINVAL), (999, 0, errno.ESRCH), (p.pid, 1, errno.EINVAL)]:
        with pytest.raises(OSError) as e:
            p.pidfd_open(pid, flags)
        assert e.value.errno == code
    fd = p.pidfd_open(p.pid)
    p.close(fd)
    with pytest.raises(OSError) as e:
        p.close(fd)
    assert e.value.errno == errno.EBADF


# ---- the 2022 RFC profile -------------------------------------------------------------------------

def test_rfc_limits_flag_and_cap_sys_admin_rule():
    def scene(kernel):
        m = thpcore.Machine("1G", seed=0, kernel=kernel)
        m.thp.khugepaged.max_ptes_none = 64
        target = m.spawn(uid=1000)
        a = target.mmap(HPAGE)
        target.write(a, PAGE)                               # 511 none > 64
        agent = m.spawn(uid=1000, caps={"CAP_SYS_NICE"})
        return m, target, a, agent, agent.pidfd_open(target.pid)

    # 6.18: no flags at all; the limits are ignored; CAP_SYS_NICE is enough.
    m, target, a, agent, fd = scene("6.18")
    with pytest.raises(OSError) as e:
        agent.process_madvise(fd, [(a, HPAGE)], MADV_COLLAPSE, MADV_F_COLLAPSE_LIMITS)
    assert e.value.errno == errno.EINVAL
    assert agent.process_madvise(fd, [(a, HPAGE)], MADV_COLLAPSE) == HPAGE
    assert ahp(target) == 2048

    # RFC: without CAP_SYS_ADMIN a remote collapse must honour the limits...
    m, target, a, agent, fd = scene("rfc-2022")
    with pytest.raises(PermissionError) as e:
        agent.process_madvise(fd, [(a, HPAGE)], MADV_COLLAPSE)
    assert e.value.errno == errno.EPERM
    # ... and then this sparse region exceeds max_ptes_none: EBUSY, nothing collapsed.
    with pytest.raises(OSError) as e:
        agent.process_madvise(fd, [(a, HPAGE)], MADV_COLLAPSE, MADV_F_COLLAPSE_LIMITS)
    assert e.value.errno == errno.EBUSY
    assert ahp(target) == 0
    target.write(a, HPAGE - 64 * PAGE)                      # now exactly 64 none
    assert agent.process_madvise(fd, [(a, HPAGE)], MADV_COLLAPSE,
                                 MADV_F_COLLAPSE_LIMITS | MADV_F_COLLAPSE_DEFRAG) == HPAGE
    assert ahp(target) == 2048
    m.check()


def test_no_writable_pte_rule_in_6_18(m):
    """Live 6.18: collapse succeeds on write-protected PTEs (after fork, after mprotect) and on a
    region of zero-page PTEs only; SCAN_PAGE_RO no longer exists."""
    from thpcore import PROT_READ
    p = m.spawn()
    a = p.mmap(3 * HPAGE)
    p.write(a, HPAGE)
    c = p.fork()
    p.madvise(a, HPAGE, MADV_COLLAPSE)                  # parent's PTEs are read-only now
    assert ahp(p) == 2048
    c.mprotect(a, 3 * HPAGE, PROT_READ)
    c.madvise(a, HPAGE, MADV_COLLAPSE)
    assert ahp(c) == 2048
    p.read(a + HPAGE, HPAGE)                            # zero-page PTEs only (not eligible at fault)
    p.madvise(a + HPAGE, HPAGE, MADV_COLLAPSE)
    assert ahp(p) == 4096 and p.smaps_rollup()["Rss"] == 4096
    assert (p.read(a + HPAGE, HPAGE) == 0).all()
    m.check()


def test_collapse_continues_past_a_region_without_a_pmd_table(m):
    """Live 6.18: a never-faulted GiB has no PMD table page (SCAN_PMD_NULL, continue), unlike
    an empty region in a populated GiB (SCAN_PMD_NONE, abort)."""
    from thpcore import MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE
    p = m.spawn()
    gib = 1 << 30
    a = p.mmap(4 * HPAGE, addr=2 * gib - 2 * HPAGE, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
    p.write(a + 2 * HPAGE, HPAGE)                 # region 2, in the second GiB
    with pytest.raises(OSError) as e:
        p.madvise(a, 4 * HPAGE, MADV_COLLAPSE)    # regions 0-1: no PMD table; 3: pmd none
    assert e.value.errno == errno.EINVAL
    assert ahp(p) == 2048
    ev = m.collapse_events()
    assert list(ev["result"][:3]) == [ScanResult.SCAN_PMD_NULL, ScanResult.SCAN_PMD_NULL,
                                      ScanResult.SCAN_SUCCEED]


def test_costs_are_charged_to_the_actor(m):
    c = m.costs
    p = m.spawn()
    a = p.mmap(4 * HPAGE)
    p.write(a, HPAGE)                                   # 512 4 KiB faults
    assert m.cpu_ns[p.pid] == 512 * c.fault_4k_ns
    assert m.latency("fault")["count"] == 512 and m.latency("fault")["p50"] == c.fault_4k_ns
    agent = m.spawn(name="agent")
    fd = agent.pidfd_open(p.pid)
    agent.process_madvise(fd, [(a, HPAGE)], MADV_COLLAPSE)   # the caller pays for the collapse
    assert m.cpu_ns[agent.pid] == c.collapse_2m_ns
    assert m.cpu_ns[p.pid] == 512 * c.fault_4k_ns
    lat = m.latency("collapse")
    assert lat["count"] == 1 and lat["p99"] == c.collapse_2m_ns
    p.write(a + HPAGE, PAGE)
    p.madvise(a + HPAGE, HPAGE, MADV_HUGEPAGE)
    m.khugepaged.wait_full_scans(2)
    assert m.cpu_ns["khugepaged"] >= c.collapse_2m_ns - 511 * (c.copy_4k_ns - c.zero_4k_ns)
    ev = m.collapse_events()
    assert ev["latency_ns"][ev["result"] == ScanResult.SCAN_SUCCEED].min() > 0
    with pytest.raises(ValueError):
        m.latency("bogus")


def test_cost_profiles_load_and_validate(tmp_path):
    import json
    from thpcore.costs import CostModel
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"fault_4k_ns": 1000}))
    m = thpcore.Machine("256M", costs=str(path))
    assert m.costs.fault_4k_ns == 1000 and m.costs.copy_4k_ns == CostModel().copy_4k_ns
    for bad in ({"fault_4k_ns": -1}, {"nope": 1}, {"copy_4k_ns": 1.5}):
        with pytest.raises(ValueError):
            thpcore.Machine("256M", costs=bad)


def test_collapse_event_log_keeps_the_most_recent(monkeypatch):
    from thpcore.mm.khugepaged import CollapseEventLog
    monkeypatch.setattr(CollapseEventLog, "LIMIT", 8)
    m = thpcore.Machine("256M", seed=0, transparent_hugepage="never")
    p = m.spawn()
    a = p.mmap(64 << 20)
    p.write(a, 64 << 20)
    for i in range(32):                       # one MADV_COLLAPSE (one record) per region
        p.madvise(a + i * (2 << 20), 2 << 20, thpcore.MADV_COLLAPSE)
    ev = m.collapse_events()
    assert 1 <= len(ev) <= 8
    assert int(ev["address"][-1]) == a + 31 * (2 << 20)      # the newest survive
    m.check()
