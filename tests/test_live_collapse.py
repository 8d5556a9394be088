"""Differential tests for MADV_COLLAPSE on the live kernel and in the simulator: return code,
AnonHugePages, Rss, Swap, content, and vmstat deltas, case by case."""

import pytest

from thpcore import (MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
                     MADV_PAGEOUT, PROT_READ)

from test_live_faults import MB, Live, SimRegion, delta, lh, run_both

pytestmark = pytest.mark.live
HP = 2 * MB


def collapse(b, r, off, length):
    return b.madvise(r, off, length, MADV_COLLAPSE)


CASES = {
    "all_written": lambda b, r: b.write(r, 0, HP),
    "one_page": lambda b, r: b.write(r, 0, 4096),
    "zero_ptes_only": lambda b, r: b.read(r, 0, HP),
    "untouched": lambda b, r: None,
    "nohugepage": lambda b, r: (b.write(r, 0, HP), b.madvise(r, 0, HP, MADV_NOHUGEPAGE)),
    "read_only": lambda b, r: (b.write(r, 0, HP), b.mprotect(r, 0, HP, PROT_READ)),
    "partial_thp": lambda b, r: (b.madvise(r, 0, HP, MADV_HUGEPAGE), b.write(r, 0, HP),
                                 b.madvise(r, 0, 4096, MADV_DONTNEED)),
    "already_thp": lambda b, r: (b.madvise(r, 0, HP, MADV_HUGEPAGE), b.write(r, 0, HP)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_madv_collapse_cases(case):
    def scenario(b):
        r = b.region(HP)
        CASES[case](b, r)
        v0 = b.vmstat()
        rc = collapse(b, r, 0, HP)
        return rc, b.smaps(r), delta(v0, b.vmstat(), ["thp_collapse_alloc"]), sorted(set(b.read(r, 0, HP)))
    live, sim = run_both(scenario, enabled="never")
    assert live == sim


@pytest.mark.parametrize("off, length", [(0, 4096), (4096, 8192), (4096, 4 * MB - 8192),
                                         (0, 4 * MB)])
def test_madv_collapse_range_rounding(off, length):
    def scenario(b):
        r = b.region(4 * MB)
        b.write(r, 0, 4 * MB)
        rc = collapse(b, r, off, length)
        return rc, b.smaps(r)
    live, sim = run_both(scenario, enabled="never")
    assert live == sim


@pytest.mark.parametrize("which", [0, 1])
def test_madv_collapse_aborts_at_a_never_touched_region(which):
    def scenario(b):
        r = b.region(4 * MB)
        b.write(r, which * HP, 4096)
        rc = collapse(b, r, 0, 4 * MB)
        return rc, b.smaps(r)
    live, sim = run_both(scenario, enabled="never")
    assert live == sim


def test_madv_collapse_swaps_in():
    def scenario(b):
        r = b.region(HP)
        b.write(r, 0, HP, value=3)
        b.madvise(r, 0, 100 * 4096, MADV_PAGEOUT)
        swapped = b.smaps(r)
        rc = collapse(b, r, 0, HP)
        return swapped, rc, b.smaps(r), sorted(set(b.read(r, 0, HP)))
    live, sim = run_both(scenario, swap=True, enabled="never")
    assert live == sim


def _live_full_scans():
    return int(open("/sys/kernel/mm/transparent_hugepage/khugepaged/full_scans").read())


@pytest.mark.parametrize("max_ptes_none, written, expect", [(511, 1, True), (0, 511, False),
                                                            (1, 511, True)])
def test_khugepaged_collapses_like_the_live_kernel(max_ptes_none, written, expect):
    """khugepaged with 10 ms sleeps: wait for two full scans on both sides."""
    import time

    def scenario(b):
        r = b.region(HP)
        b.write(r, 0, written * 4096)
        b.madvise(r, 0, HP, MADV_HUGEPAGE)
        if isinstance(b, Live):
            target = _live_full_scans() + 2
            deadline = time.time() + 10
            while _live_full_scans() < target and time.time() < deadline:
                time.sleep(0.01)
            assert _live_full_scans() >= target, "khugepaged did not complete two full scans"
        else:
            b.m.khugepaged.wait_full_scans(2)
        return b.smaps(r)["AnonHugePages"], sorted(set(b.read(r, 0, HP)))

    def sim_knobs(sim):
        k = sim.m.thp.khugepaged
        k.scan_sleep_millisecs = k.alloc_sleep_millisecs = 10
        k.max_ptes_none = max_ptes_none

    knobs = {"enabled": "madvise", "khugepaged/scan_sleep_millisecs": 10,
             "khugepaged/alloc_sleep_millisecs": 10, "khugepaged/max_ptes_none": max_ptes_none}
    live, sim = run_both(scenario, sim_setup=sim_knobs, **knobs)
    assert live == sim
    assert (live[0] == 2048) == expect
