"""Differential tests: the same fault / madvise / fork / swap sequences on the live kernel and
in the simulator, compared outcome by outcome (Rss, AnonHugePages, Swap, errno, vmstat deltas).

Every THP knob a test sets is restored (live_harness.thp_settings), the swap file is removed
(live_harness.swap_file), and only this process and its own children are touched.
"""

import errno
import os

import pytest

import thpcore
from thpcore import (MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT, PROT_READ,
                     PROT_WRITE)

pytestmark = pytest.mark.live

MB = 1 << 20
THP = "/sys/kernel/mm/transparent_hugepage"


def _need_live():
    if not os.path.exists(f"{THP}/enabled") or os.geteuid() != 0:
        pytest.skip("needs root and /sys/kernel/mm/transparent_hugepage")
    if not os.path.exists("/proc/self/smaps"):
        pytest.skip("no /proc/self/smaps")


lh = pytest.importorskip("live_harness")


class Live:
    """The scenario backend that runs on this machine's kernel."""

    def __init__(self):
        self.regions = []

    def region(self, length, offset=0):
        r = lh.Region.aligned(length, offset=offset)
        self.regions.append(r)
        return r

    def madvise(self, r, off, length, advice):
        return r.madvise(off, length, advice)

    def mprotect(self, r, off, length, prot):
        return r.mprotect(off, length, prot)

    def munmap(self, r, off, length):
        return r.munmap(off, length)

    def write(self, r, off, length, value=1):
        r.write(off, length, value=value)

    def read(self, r, off, length):
        return list(r.read(off, length))

    def smaps(self, r):
        s = r.smaps(partial="include")
        return {k: s.get(k, 0) for k in ("Rss", "AnonHugePages", "Swap")}

    def vmstat(self):
        return lh.vmstat()

    def close(self):
        for r in self.regions:
            r.close()


class SimRegion:
    def __init__(self, p, addr, length):
        self.p, self.addr, self.length = p, addr, length


class Sim:
    """The same scenario on a simulated machine configured like the live knobs."""

    def __init__(self, swap=None):
        self.m = thpcore.Machine("4G", swap=swap, seed=0)
        for knob in ("enabled", "defrag", "use_zero_page", "shrink_underused"):
            self.m.sysfs.write(f"{THP}/{knob}", lh.read_knob(knob).split("[")[-1].split("]")[0])
        self.p = self.m.spawn()

    def region(self, length, offset=0):
        base = self.p.mmap(length + 2 * MB)
        assert base % (2 * MB) == 0
        return SimRegion(self.p, base + offset, length)

    def _errno(self, fn):
        try:
            fn()
            return 0
        except OSError as e:
            return e.errno

    def madvise(self, r, off, length, advice):
        return self._errno(lambda: r.p.madvise(r.addr + off, length, advice))

    def mprotect(self, r, off, length, prot):
        return self._errno(lambda: r.p.mprotect(r.addr + off, length, prot))

    def munmap(self, r, off, length):
        return self._errno(lambda: r.p.munmap(r.addr + off, length))

    def write(self, r, off, length, value=1):
        r.p.write(r.addr + off, length, value=value)

    def read(self, r, off, length):
        return [int(x) for x in r.p.read(r.addr + off, length)]

    def smaps(self, r):
        out = {"Rss": 0, "AnonHugePages": 0, "Swap": 0}
        for e in r.p.smaps():
            if e["end"] > r.addr and e["start"] < r.addr + r.length:
                for k in out:
                    out[k] += e[k]
        return out

    def vmstat(self):
        return dict(self.m.vmstat)

    def close(self):
        self.m.check()


def delta(before, after, names):
    return {n: after.get(n, 0) - before.get(n, 0) for n in names}


def run_both(scenario, swap=False, sim_setup=None, **knobs):
    _need_live()
    with lh.thp_settings(**knobs):
        if swap:
            with lh.swap_file(64 * MB):
                return _run_pair(scenario, swap, sim_setup)
        return _run_pair(scenario, swap, sim_setup)


def _run_pair(scenario, swap, sim_setup=None):
    live = Live()
    try:
        got_live = scenario(live)
    finally:
        live.close()
    sim = Sim(swap="64M" if swap else None)
    if sim_setup is not None:
        sim_setup(sim)
    got_sim = scenario(sim)
    sim.close()
    return got_live, got_sim


# ---- scenarios ---------------------------------------------------------------------------------

@pytest.mark.parametrize("enabled", ["always", "madvise", "never"])
@pytest.mark.parametrize("advice", [None, MADV_HUGEPAGE, MADV_NOHUGEPAGE])
def test_write_fault_matrix(enabled, advice):
    def scenario(b):
        r = b.region(4 * MB)
        if advice is not None:
            b.madvise(r, 0, 4 * MB, advice)
        v0 = b.vmstat()
        b.write(r, 0, 4 * MB)
        return b.smaps(r), delta(v0, b.vmstat(), ["thp_fault_alloc", "thp_fault_fallback"])
    live, sim = run_both(scenario, enabled=enabled, defrag="madvise")
    assert live == sim


@pytest.mark.parametrize("use_zero_page", [0, 1])
def test_read_then_write_on_an_advised_region(use_zero_page):
    def scenario(b):
        r = b.region(4 * MB)
        b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
        v0 = b.vmstat()
        values = b.read(r, 0, 4 * MB)
        after_read = b.smaps(r)
        v1 = b.vmstat()
        b.write(r, 4096, 4096, value=7)
        return (sum(values), after_read, delta(v0, v1, ["thp_fault_alloc"]), b.smaps(r),
                delta(v1, b.vmstat(), ["thp_fault_alloc", "thp_split_pmd"]), b.read(r, 0, 3 * 4096))
    live, sim = run_both(scenario, enabled="madvise", use_zero_page=use_zero_page)
    assert live == sim


def test_unaligned_vma():
    def scenario(b):
        r = b.region(4 * MB, offset=4096)
        b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
        b.write(r, 0, 4 * MB)
        return b.smaps(r)
    live, sim = run_both(scenario, enabled="madvise")
    assert live == sim


@pytest.mark.parametrize("how", ["dontneed_4k", "dontneed_all", "munmap_4k", "mprotect_4k",
                                 "mprotect_all"])
def test_partial_operations_on_a_thp(how):
    def scenario(b):
        r = b.region(2 * MB)
        b.madvise(r, 0, 2 * MB, MADV_HUGEPAGE)
        b.write(r, 0, 2 * MB)
        v0 = b.vmstat()
        if how == "dontneed_4k":
            rc = b.madvise(r, 0, 4096, MADV_DONTNEED)
        elif how == "dontneed_all":
            rc = b.madvise(r, 0, 2 * MB, MADV_DONTNEED)
        elif how == "munmap_4k":
            rc = b.munmap(r, 0, 4096)
        elif how == "mprotect_4k":
            rc = b.mprotect(r, 0, 4096, PROT_READ)
        else:
            rc = b.mprotect(r, 0, 2 * MB, PROT_READ)
        return rc, b.smaps(r), delta(v0, b.vmstat(), ["thp_split_pmd", "thp_deferred_split_page",
                                                      "thp_split_page"])
    live, sim = run_both(scenario, enabled="madvise")
    assert live == sim


def test_fork_and_cow_write():
    def scenario(b):
        r = b.region(2 * MB)
        b.madvise(r, 0, 2 * MB, MADV_HUGEPAGE)
        b.write(r, 0, 2 * MB, value=5)
        if isinstance(b, Live):
            def child():
                b.write(r, 0, 4096, value=9)
                return b.smaps(r), b.read(r, 0, 2 * 4096)
            child_view = lh.fork_and_run(child)
        else:
            c = b.p.fork()
            cr = SimRegion(c, r.addr, r.length)
            b.write(cr, 0, 4096, value=9)
            child_view = (b.smaps(cr), b.read(cr, 0, 2 * 4096))
            c.exit()
        # (No vmstat deltas here: the forked interpreter COWs its own THPs too.)
        return child_view, b.smaps(r), b.read(r, 0, 2 * 4096)
    live, sim = run_both(scenario, enabled="madvise")
    assert live == sim


@pytest.mark.parametrize("thp", [False, True])
def test_pageout_and_reread(thp):
    def scenario(b):
        r = b.region(2 * MB)
        if thp:
            b.madvise(r, 0, 2 * MB, MADV_HUGEPAGE)
        b.write(r, 0, 2 * MB, value=11)
        v0 = b.vmstat()
        rc = b.madvise(r, 0, 2 * MB, MADV_PAGEOUT)
        out = b.smaps(r)
        d = delta(v0, b.vmstat(), ["pswpout", "thp_swpout", "thp_swpout_fallback", "thp_split_page"])
        values = b.read(r, 0, 2 * MB)
        return rc, out, d, set(values), b.smaps(r)
    live, sim = run_both(scenario, swap=True, enabled="madvise")
    assert live == sim


def test_madvise_errno():
    def scenario(b):
        r = b.region(4 * MB)
        return [b.madvise(r, 1, 4096, MADV_DONTNEED),            # unaligned start
                b.madvise(r, 0, 4096, 99),                       # unknown advice
                b.madvise(r, 0, 0, 26),                          # unknown, even with len 0
                b.madvise(r, 0, 0, MADV_DONTNEED),               # len 0
                b.madvise(r, 0, -4096, MADV_DONTNEED),           # rounds/wraps
                b.mprotect(r, 0, 4 * MB, PROT_READ | PROT_WRITE)]
    live, sim = run_both(scenario, enabled="madvise")
    assert live == sim
    assert live[:4] == [errno.EINVAL, errno.EINVAL, errno.EINVAL, 0]


def test_partial_cold_splits_the_folio_and_remaps_zero_subpages():
    from thpcore import MADV_COLD

    def scenario(b):
        r = b.region(2 * MB)
        b.madvise(r, 0, 2 * MB, MADV_HUGEPAGE)
        b.write(r, 0, MB, value=0)
        b.write(r, MB, MB, value=5)
        v0 = b.vmstat()
        rc = b.madvise(r, 0, 4096, MADV_COLD)
        return rc, b.smaps(r), delta(v0, b.vmstat(), ["thp_split_page", "thp_split_pmd"]), \
            set(b.read(r, 0, 2 * MB))
    live, sim = run_both(scenario, enabled="madvise")
    assert live == sim
