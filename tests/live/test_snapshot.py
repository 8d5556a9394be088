"""Snapshots of a live process, rebuilt in the simulator: predict MADV_COLLAPSE region by region,
then do it for real with process_madvise and compare."""

import errno
import os

import numpy as np
import pytest

import thpcore
from thpcore import MADV_COLLAPSE, MADV_HUGEPAGE, MADV_NOHUGEPAGE
from thpcore.live.snapshot import capture
from thpcore.snapshot import rebuild

pytestmark = pytest.mark.live
lh = pytest.importorskip("live_harness")
HP = 2 << 20


def target(chan):
    """The child: three VMAs in states MADV_COLLAPSE treats differently."""
    a = lh.Region.aligned(4 * HP)
    a.write(0, HP, value=1)                 # region 0: full
    a.write(HP, 4096, value=2)              # region 1: one page
    a.write(3 * HP, 8192, value=3)          # region 2: untouched (PMD none); region 3: two pages
    b = lh.Region.aligned(2 * HP)
    b.write(0, 2 * HP, value=4)
    b.madvise(0, 2 * HP, MADV_NOHUGEPAGE)   # refused
    c = lh.Region.aligned(HP)
    c.madvise(0, HP, MADV_HUGEPAGE)
    c.write(0, HP, value=5)                 # already a THP
    chan.send([(a.addr, 4), (b.addr, 2), (c.addr, 1)])
    chan.recv()
    return [r.smaps(partial="include")["AnonHugePages"] for r in (a, b, c)]


def test_snapshot_predicts_process_madvise_collapse(tmp_path):
    if os.geteuid() != 0 or not os.access("/proc/kpageflags", os.R_OK):
        pytest.skip("needs root for pagemap pfns and kpageflags")
    with lh.thp_settings(enabled="madvise"):
        with lh.ForkedChild(target) as child:
            layout = child.recv()
            path = tmp_path / "snap.npz"
            snap = capture(child.pid)
            np.savez_compressed(path, **snap)
            m = thpcore.Machine.from_snapshot(path, memory="2G")
            sim_p = m.process(child.pid)
            assert sim_p.name == open(f"/proc/{child.pid}/comm").read().strip()
            regions = [base + i * HP for base, n in layout for i in range(n)]
            predicted = []
            for r in regions:
                try:
                    sim_p.madvise(r, HP, MADV_COLLAPSE)
                    predicted.append(0)
                except OSError as e:
                    predicted.append(e.errno)
            fd = lh.pidfd_open(child.pid)
            actual = []
            try:
                for r in regions:
                    try:
                        actual.append(0 if lh.process_madvise(fd, [(r, HP)], MADV_COLLAPSE) == HP
                                      else -1)
                    except OSError as e:
                        actual.append(e.errno)
            finally:
                os.close(fd)
            child.send("done")
            live_ahp = child.join()
    assert predicted == actual
    assert actual == [0, 0, errno.EINVAL, 0, errno.EINVAL, errno.EINVAL, 0]
    sim_ahp = [sum(e["AnonHugePages"] for e in sim_p.smaps() if base <= e["start"] < base + n * HP)
               for base, n in layout]
    assert sim_ahp == live_ahp
    m.check()


def test_snapshot_round_trip_of_a_simulated_layout(tmp_path):
    """capture() needs a live pid; rebuild() takes the same dict, so feed it one by hand."""
    pm = np.zeros(1024, dtype=np.uint64)
    pm[:3] = (np.uint64(1) << np.uint64(63)) | np.arange(100, 103, dtype=np.uint64)
    pm[10] = np.uint64(1) << np.uint64(62)
    snap = {"pid": np.int64(4242), "uid": np.int64(1000), "comm": np.array("demo"),
            "vma_start": np.array([1 << 30], dtype=np.uint64),
            "vma_end": np.array([(1 << 30) + 1024 * 4096], dtype=np.uint64),
            "vma_flags": np.array([3 | 16], dtype=np.uint8), "pagemap": pm,
            "kpageflags": np.zeros(1024, dtype=np.uint64), "kpagecount": np.zeros(1024, np.uint64),
            "knobs": np.array(["enabled=madvise", "khugepaged/max_ptes_none=200"]),
            "memtotal_kb": np.int64(1 << 20)}
    m = rebuild(thpcore.Machine, snap)
    p = m.process(4242)
    assert p.name == "demo" and p.uid == 1000
    r = p.smaps_rollup()
    assert r["Rss"] == 12 and r["Swap"] == 4
    assert m.thp.khugepaged.max_ptes_none == 200 and m.thp.enabled == "madvise"
    assert "hg" in p.smaps()[0]["VmFlags"]
    m.check()
