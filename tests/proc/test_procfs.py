"""/proc views: exact kernel text, and parsers that read it back (live or simulated)."""

import thpcore
from thpcore import parse_buddyinfo, parse_pagetypeinfo, parse_vmstat
from thpcore.proc.procfs import render_pagetypeinfo
from thpcore.mm.vmstat import VMSTAT_NAMES

import numpy as np


def test_buddyinfo_exact_text(machine):
    assert machine.procfs.read("/proc/buddyinfo") == (
        "Node 0, zone   Normal" + "      0" * 10 + "     16 \n")
    machine.kernel_alloc(0, "movable")
    assert machine.procfs.read("/proc/buddyinfo") == (
        "Node 0, zone   Normal" + "      1" * 10 + "     15 \n")


def test_pagetypeinfo_exact_text(machine):
    machine.kernel_alloc(0, "unmovable")
    text = machine.procfs.read("/proc/pagetypeinfo")
    lines = text.split("\n")
    assert lines[0] == "Page block order: 9"
    assert lines[1] == "Pages per block:  512"
    assert lines[2] == ""
    assert lines[3] == ("Free pages count per migrate type at order "
                        + "".join(f"{o:7d}" for o in range(11)) + " ")
    assert lines[4] == "Node    0, zone   Normal, type    Unmovable" + "      1" * 10 + "      0 "
    assert lines[5] == "Node    0, zone   Normal, type      Movable" + "      0" * 10 + "     15 "
    assert lines[8] == "Node    0, zone   Normal, type      Isolate" + "      0" * 11 + " "
    assert lines[9] == ""
    assert lines[10] == ("Number of blocks type     Unmovable      Movable  Reclaimable"
                         "   HighAtomic      Isolate ")
    assert lines[11] == ("Node 0, zone   Normal            2           30            0"
                         "            0            0 ")
    assert lines[12] == "" and len(lines) == 13


def test_pagetypeinfo_caps_long_lists():
    area = np.zeros((5, 11), dtype=np.int64)
    area[1, 0] = 123456
    area[1, 1] = 99999
    line = render_pagetypeinfo(area, np.zeros(5, dtype=np.int64)).split("\n")[5]
    assert line.startswith("Node    0, zone   Normal, type      Movable >100000  99999 ")
    assert parse_pagetypeinfo(render_pagetypeinfo(area, np.zeros(5, np.int64)))[
        "free"][(0, "Normal", "Movable")][:2] == [100000, 99999]


def test_parsers_round_trip(machine):
    pfns = machine.kernel_alloc_bulk(0, "reclaimable", 1000)
    buddy = parse_buddyinfo(machine.procfs.read("/proc/buddyinfo"))
    zone = machine.page_alloc.zone
    assert buddy == {(0, "Normal"): list(zone.free_area().sum(axis=0))}
    pti = parse_pagetypeinfo(machine.procfs.read("/proc/pagetypeinfo"))
    assert pti["pageblock_order"] == 9
    assert pti["free"][(0, "Normal", "Reclaimable")] == list(zone.free_area()[2])
    assert pti["blocks"][(0, "Normal")] == {
        "Unmovable": 0, "Movable": 30, "Reclaimable": 2, "HighAtomic": 0, "Isolate": 0}
    vm = parse_vmstat(machine.procfs.read("/proc/vmstat"))
    assert vm == dict(machine.vmstat)
    assert vm["pgalloc_normal"] == len(pfns) == 1000


def test_vmstat_uses_kernel_names_in_kernel_order(machine):
    names = list(machine.vmstat)
    assert names == [n for n in VMSTAT_NAMES if n in set(names)]
    assert names[0] == "nr_free_pages" and names[-1] == "nr_unstable"
    assert machine.vmstat["nr_unstable"] == 0
    assert "pgmajfault" not in machine.vmstat               # unmodelled counters are absent


def test_state_hash_is_deterministic_and_sensitive():
    def run(seed, extra=False):
        m = thpcore.Machine("32M", seed=seed)
        for order in (0, 3, 9):
            m.kernel_alloc(order, "unmovable")
        m.kernel_free_bulk(m.rng.permutation(m.kernel_alloc_bulk(0, "movable", 500)), 0)
        if extra:
            m.thp.khugepaged.max_ptes_none = 0
        return m.state_hash()

    assert run(0) == run(0)
    assert run(0) != run(1)                 # a different seed shuffles the frees differently
    assert run(0) != run(0, extra=True)     # knobs are part of the state


def test_meminfo():
    from thpcore.proc.procfs import parse_meminfo
    m = thpcore.Machine("1G", swap="64M")
    p = m.spawn()
    a = p.mmap(4 << 20)
    p.madvise(a, 4 << 20, thpcore.MADV_HUGEPAGE)
    p.write(a, 3 << 20)
    text = m.procfs.read("/proc/meminfo")
    assert text.startswith("MemTotal:        1048576 kB\n")
    info = parse_meminfo(text)
    assert info["AnonHugePages"] == 4096 and info["AnonPages"] == 4096   # 2nd region: whole THP
    assert info["SwapTotal"] == 65532 and info["SwapFree"] == 65532     # slot 0 is the header
    assert info["PageTables"] == 8                                          # two tables
    assert list(info) == ["MemTotal", "MemFree", "SwapTotal", "SwapFree", "AnonPages",
                          "PageTables", "AnonHugePages"]


def test_smaps_parser_reads_simulated_text():
    from thpcore.proc.smaps import parse_smaps
    m = thpcore.Machine("1G")
    p = m.spawn()
    a = p.mmap(4 << 20)
    p.madvise(a, 4 << 20, thpcore.MADV_HUGEPAGE)
    p.write(a, 3 << 20)
    parsed = parse_smaps(m.procfs.read(f"/proc/{p.pid}/smaps"))
    direct = p.smaps()
    assert len(parsed) == len(direct) == 1
    assert parsed[0]["start"] == a and parsed[0]["fields"]["AnonHugePages"] == 4096
    for k in ("Rss", "Pss", "Private_Dirty", "AnonHugePages", "Swap", "Size"):
        assert parsed[0]["fields"][k] == direct[0][k]
    assert parsed[0]["VmFlags"] == direct[0]["VmFlags"] and parsed[0]["THPeligible"] == 1


def test_scan_pagemap_bits_match_proc_pagemap():
    """The engine's nogil pagemap bits agree with thpcore.proc.pagemap, the one Python layout."""
    from thpcore import _engine
    from thpcore.proc.pagemap import (KPF_THP, KPF_ZERO_PAGE, PM_GUARD_REGION, PM_PFN_MASK,
                                      PM_PRESENT, PM_SWAP)
    n = 1024
    pm = np.zeros(n, dtype=np.uint64)
    kf = np.zeros(n, dtype=np.uint64)
    kc = np.zeros(n, dtype=np.uint64)
    pm[0] = PM_PRESENT | 7
    kf[0] = 1 << KPF_THP
    kc[0] = 2
    pm[1] = PM_SWAP | 5
    pm[2] = PM_SWAP | PM_GUARD_REGION | 31
    pm[3] = PM_PRESENT | 9
    kf[3] = 1 << KPF_ZERO_PAGE
    pm[512:] = PM_PRESENT | (np.arange(512, dtype=np.uint64) + (PM_PFN_MASK & ~511) - 512)
    kf[512:] = 1 << KPF_THP
    counts = _engine.scan_pagemap(pm, kf, kc, 0)
    row = dict(zip(_engine.REGION_FIELDS, counts[0].tolist()))
    assert row == {"present": 1, "swapped": 1, "none": 509, "zero": 1, "shared": 1,
                   "pte_mapped_thp": 1, "pmd_mapped": 0}
    assert counts[1].tolist() == [512, 0, 0, 0, 0, 0, 512]
