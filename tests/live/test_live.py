"""Differential tests against the live kernel of this machine.

They read (and, as root, write) /proc and /sys/kernel/mm/transparent_hugepage; every knob a
test writes is restored in a finally block. Skipped where the files or privileges are missing.
"""

import errno
import os
import re

import pytest

import thpcore
from thpcore import parse_buddyinfo, parse_pagetypeinfo, parse_vmstat
from thpcore.mm.page_alloc import MIGRATETYPE_NAMES, recommended_min_free_kbytes, setup_per_zone_wmarks
from thpcore.proc.procfs import render_buddyinfo, render_pagetypeinfo
from thpcore.mm.sysfs import THP_ROOT
from thpcore.mm.vmstat import VMSTAT_NAMES

import numpy as np

from cases import WRITE_CASES

pytestmark = pytest.mark.live

LOWMEM_ZONES = ("DMA", "DMA32", "Normal")


def need(path, write=False):
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this machine")
    if not os.access(path, os.R_OK) or (write and os.geteuid() != 0):
        pytest.skip(f"no {'write' if write else 'read'} access to {path}")


def read(path):
    with open(path) as f:
        return f.read()


def live_zones():
    """{zone: {'managed', 'min', 'low', 'high', 'boost'}} from /proc/zoneinfo (node 0)."""
    zones, cur = {}, None
    for line in read("/proc/zoneinfo").splitlines():
        m = re.match(r"Node (\d+), zone\s+(\S+)", line)
        if m:
            cur = zones.setdefault(m.group(2), {}) if m.group(1) == "0" else None
            continue
        parts = line.split()
        if cur is not None and len(parts) == 2 and parts[0] in ("managed", "min", "low", "high", "boost"):
            cur[parts[0]] = int(parts[1])
    return zones


def test_watermarks_match_live_zoneinfo():
    need("/proc/zoneinfo")
    zones = {z: v for z, v in live_zones().items() if z in LOWMEM_ZONES and v.get("managed")}
    if not zones:
        pytest.skip("no lowmem zones in /proc/zoneinfo")
    min_free = int(read("/proc/sys/vm/min_free_kbytes"))
    wsf = int(read("/proc/sys/vm/watermark_scale_factor"))
    names = list(zones)
    predicted = setup_per_zone_wmarks(min_free, [zones[z]["managed"] for z in names], wsf)
    for name, (wmin, wlow, whigh) in zip(names, predicted):
        z = zones[name]
        boost = z.get("boost", 0)
        assert (z["min"] - boost, z["low"] - boost, z["high"] - boost) == (wmin, wlow, whigh), name


def test_min_free_kbytes_matches_khugepaged_recommendation():
    need(THP_ROOT + "/enabled")
    enabled = re.search(r"\[(\w+)\]", read(THP_ROOT + "/enabled")).group(1)
    per_size = THP_ROOT + "/hugepages-2048kB/enabled"
    ps = re.search(r"\[(\w+)\]", read(per_size)).group(1) if os.path.exists(per_size) else "inherit"
    if not (ps in ("always", "madvise") or (ps == "inherit" and enabled != "never")):
        pytest.skip("PMD THP is disabled on this host")
    zones = {z: v for z, v in live_zones().items() if z in LOWMEM_ZONES and v.get("managed")}
    nr_free_buffer = sum(max(v["managed"] - v["high"], 0) for v in zones.values())
    live = int(read("/proc/sys/vm/min_free_kbytes"))
    recommended = recommended_min_free_kbytes(len(zones), nr_free_buffer)
    if live > recommended:
        pytest.skip("min_free_kbytes was raised above the recommendation (user setting)")
    assert live == recommended


def test_buddyinfo_and_pagetypeinfo_render_like_the_live_kernel():
    need("/proc/pagetypeinfo")
    live_buddy = read("/proc/buddyinfo")
    for (node, zone), counts in parse_buddyinfo(live_buddy).items():
        area = np.zeros((5, 11), dtype=np.int64)
        area[0] = counts
        assert render_buddyinfo(area, node, zone) in live_buddy
    live = read("/proc/pagetypeinfo")
    parsed = parse_pagetypeinfo(live)
    if list(parsed["blocks"].values())[0].keys() != set(MIGRATETYPE_NAMES):
        pytest.skip("this kernel has a different migratetype set (CMA?)")
    for (node, zone), blocks in parsed["blocks"].items():
        area = np.array([parsed["free"][(node, zone, t)] for t in MIGRATETYPE_NAMES], dtype=np.int64)
        ours = render_pagetypeinfo(area, np.array([blocks[t] for t in MIGRATETYPE_NAMES]), node, zone)
        for line in ours.splitlines(keepends=True):
            if "zone" in line and ">" not in line:     # a capped count reads back as 100000
                assert line in live, line
        assert ours.startswith(live[:live.index("Node")])


def test_vmstat_names_match_the_live_kernel():
    need("/proc/vmstat")
    live = list(parse_vmstat(read("/proc/vmstat")))
    if os.uname().release.split(".")[:2] != ["6", "18"]:
        pytest.skip("live kernel is not 6.18")
    assert list(VMSTAT_NAMES) == live
    assert set(thpcore.Machine("64M").vmstat) <= set(live)


# ---- sysfs writes: the same bytes to the live kernel and to the simulator ---------------------

KNOBS = ["enabled", "defrag", "use_zero_page", "shrink_underused", "shmem_enabled",
         "hugepages-2048kB/enabled", "hugepages-2048kB/shmem_enabled",
         "khugepaged/defrag", "khugepaged/max_ptes_none", "khugepaged/max_ptes_swap",
         "khugepaged/max_ptes_shared", "khugepaged/pages_to_scan",
         "khugepaged/scan_sleep_millisecs", "khugepaged/alloc_sleep_millisecs"]


def knob_value(text):
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip()


@pytest.fixture
def live_knobs():
    """Snapshot every THP knob and restore it afterwards, whatever happens."""
    need(THP_ROOT + "/enabled", write=True)
    import live_harness
    with live_harness.knob_lock():
        yield from _snapshot_and_restore()


def _snapshot_and_restore():
    saved = {k: knob_value(read(f"{THP_ROOT}/{k}")) for k in KNOBS if os.path.exists(f"{THP_ROOT}/{k}")}
    try:
        yield saved
    finally:
        for k, v in saved.items():
            path = f"{THP_ROOT}/{k}"
            if knob_value(read(path)) != v:
                with open(path, "w") as f:
                    f.write(v)
        assert {k: knob_value(read(f"{THP_ROOT}/{k}")) for k in saved} == saved


def live_write(path, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data.encode("latin-1") if isinstance(data, str) else data)
    finally:
        os.close(fd)


def test_sysfs_writes_match_the_live_kernel(live_knobs):
    m = thpcore.Machine("1G")
    mismatches = []
    for rel, data, _ in WRITE_CASES:
        path = f"{THP_ROOT}/{rel}"
        if rel not in live_knobs:
            continue
        # Start both from the live value, so read-backs are comparable.
        m.sysfs.write(path, live_knobs[rel])
        try:
            live = ("ok", live_write(path, data), read(path))
        except OSError as e:
            live = ("err", errno.errorcode[e.errno], read(path))
        try:
            sim = ("ok", m.sysfs.write(path, data), m.sysfs.read(path))
        except OSError as e:
            sim = ("err", errno.errorcode[e.errno], m.sysfs.read(path))
        if live != sim:
            mismatches.append((rel, data[:40], live, sim))
        with open(path, "w") as f:
            f.write(live_knobs[rel])
    assert mismatches == []


def test_read_only_and_missing_files_match_the_live_kernel():
    need(THP_ROOT + "/khugepaged/full_scans", write=True)
    m = thpcore.Machine("1G")
    for rel, expect in [("khugepaged/full_scans", errno.EACCES), ("hpage_pmd_size", errno.EACCES),
                        ("no_such_knob", errno.ENOENT)]:
        path = f"{THP_ROOT}/{rel}"
        with pytest.raises(OSError) as live:
            live_write(path, "1")
        with pytest.raises(OSError) as sim:
            m.sysfs.write(path, "1")
        assert live.value.errno == sim.value.errno == expect


def test_min_free_kbytes_follows_thp_enable_like_the_live_kernel(live_knobs):
    """Turning PMD THP off recomputes min_free_kbytes; on again restores the recommendation."""
    need("/proc/sys/vm/min_free_kbytes")
    before = int(read("/proc/sys/vm/min_free_kbytes"))
    live_write(THP_ROOT + "/enabled", "never")
    off = int(read("/proc/sys/vm/min_free_kbytes"))
    live_write(THP_ROOT + "/enabled", live_knobs["enabled"])
    on = int(read("/proc/sys/vm/min_free_kbytes"))
    m = thpcore.Machine("4G")
    sim_before = m.page_alloc.min_free_kbytes
    m.thp.enabled = "never"
    sim_off = m.page_alloc.min_free_kbytes
    m.thp.enabled = "madvise"
    assert on == before and m.page_alloc.min_free_kbytes == sim_before
    assert (off < before) == (sim_off < sim_before)
