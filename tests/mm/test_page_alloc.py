"""The buddy allocator against hand-derived Linux 6.18 outcomes (mm/page_alloc.c)."""

import errno

import numpy as np
import pytest

import thpcore
from thpcore import _engine
from thpcore.mm.page_alloc import (MIGRATE_MOVABLE, MIGRATE_UNMOVABLE, calculate_min_free_kbytes,
                                fragmentation_index, recommended_min_free_kbytes,
                                setup_per_zone_wmarks)

from conftest import unchanged

MOV, UNM = MIGRATE_MOVABLE, MIGRATE_UNMOVABLE


def free_lists(m, mt):
    zone = m.page_alloc.zone
    return {o: zone.free_list(mt, o) for o in range(11) if zone.free_list(mt, o)}


def test_boot_frees_everything_as_movable_order10_blocks_in_ascending_order(machine):
    zone = machine.page_alloc.zone
    assert zone.nr_free_pages == 16384
    assert free_lists(machine, MOV) == {10: list(range(0, 16384, 1024))}
    assert list(zone.pageblock_counts()) == [0, 32, 0, 0, 0]
    assert machine.vmstat["pgfree"] == 16384          # boot frees count, as __free_pages_ok does
    assert machine.vmstat["pgalloc_normal"] == 0
    machine.check()


def test_alloc_takes_lowest_piece_and_expand_puts_upper_halves_at_list_heads(machine):
    pfn = machine.kernel_alloc(0, "movable")
    assert pfn == 0
    lists = free_lists(machine, MOV)
    assert lists[10] == list(range(1024, 16384, 1024))
    for o in range(10):
        assert lists[o] == [1 << o]
    machine.check()
    machine.kernel_free(pfn, 0)
    # Fully merged again; an order-10 block always goes to the head.
    assert free_lists(machine, MOV) == {10: list(range(0, 16384, 1024))}
    machine.check()


def test_free_goes_to_tail_when_the_next_order_buddy_is_free(machine):
    pfns = [machine.kernel_alloc(0, "movable") for _ in range(8)]
    assert pfns == list(range(8))
    machine.kernel_free(5, 0)        # buddy 4 busy, order-1 buddy 6 busy -> head
    machine.kernel_free(2, 0)        # head
    machine.kernel_free(3, 0)        # merges with 2 into an order-1 block at 2
    assert free_lists(machine, MOV)[1] == [2]
    machine.kernel_free(1, 0)        # buddy 0 busy, but 0's order-1 buddy (2) is free -> tail
    assert free_lists(machine, MOV)[0] == [5, 1]
    machine.check()


def test_unmovable_request_claims_a_whole_order10_block(machine):
    zone = machine.page_alloc.zone
    pfn = machine.kernel_alloc(0, "unmovable")
    assert pfn == 0
    assert list(zone.pageblock_counts()) == [2, 30, 0, 0, 0]
    assert {o: len(v) for o, v in free_lists(machine, UNM).items()} == {o: 1 for o in range(10)}
    assert zone.alloc_fallbacks == 1
    assert zone.watermark_boost == 0                  # no boost when a >= pageblock block is taken
    machine.check()
    # Freeing does not give the pageblocks back to movable.
    machine.kernel_free(pfn, 0)
    assert list(zone.pageblock_counts()) == [2, 30, 0, 0, 0]
    assert free_lists(machine, UNM) == {10: [0]}
    machine.check()


def test_movable_claims_back_then_boosts_and_claims_a_polluted_pageblock(small):
    """16 MiB: min/low/high = 128/160/192. One unmovable page pins pageblock 0."""
    m, zone = small, small.page_alloc.zone
    assert zone.watermarks() == (128, 160, 192)
    assert m.kernel_alloc(0, "unmovable") == 0               # claims pageblocks 0 and 1
    assert len(m.kernel_alloc_bulk(0, "movable", 3072)) == 3072   # the three movable blocks
    assert MOV not in [mt for mt in range(3) if zone.free_area()[mt].any()]

    # Movable lists are empty: the order-9 unmovable block (pageblock 1) is claimed whole.
    assert m.kernel_alloc(0, "movable") == 512
    assert list(zone.pageblock_counts()) == [1, 7, 0, 0, 0]
    assert zone.watermark_boost == 0
    assert len(m.kernel_alloc_bulk(0, "movable", 511)) == 511

    # Now only pageblock 0's 511 free pages remain, on unmovable lists at orders 0..8.
    # Claiming from the order-8 block boosts the watermark by a pageblock (max(512, 1.5*192))
    # and, with 511 free >= 256, converts pageblock 0 to movable despite its unmovable page.
    assert m.kernel_alloc(0, "movable") == 1
    assert list(zone.pageblock_counts()) == [0, 8, 0, 0, 0]
    assert zone.watermark_boost == 512
    assert zone.alloc_fallbacks == 3
    m.check()

    # 510 free pages are now below min + boost (640): the allocator refuses.
    err = unchanged(m, lambda: m.kernel_alloc(0, "movable"), OSError)
    assert err.errno == errno.ENOMEM
    # Recomputing the watermarks (as a sysctl write does) drops the boost.
    m.sysctl.set("watermark_scale_factor", 10)
    assert zone.watermark_boost == 0
    assert m.kernel_alloc(0, "movable") >= 0
    m.check()


def test_unmovable_request_steals_a_single_page_when_no_block_can_be_claimed(small):
    m, zone = small, small.page_alloc.zone
    got = m.kernel_alloc_bulk(0, "movable", 10_000)
    assert len(got) == 4096 - 128                      # stops at the min watermark (128)
    assert list(got[:4]) == [0, 1, 2, 3]
    m.kernel_free_bulk([0, 2, 4, 6, 8, 10, 12, 14, 16, 18], 0)
    assert zone.free_list(MOV, 0) == [18, 16, 14, 12, 10, 8, 6, 4, 2, 0]
    fallbacks = zone.alloc_fallbacks
    # 138 free pages: below low (160), above min (128): the slow path serves it. No pageblock
    # has 256 free-or-alike pages, so claiming fails and the smallest movable block is stolen.
    pfn = m.kernel_alloc(0, "unmovable")
    assert pfn == 18
    assert list(zone.pageblock_counts()) == [0, 8, 0, 0, 0]
    assert zone.alloc_fallbacks == fallbacks + 1
    assert zone.watermark_boost == 512                 # the failed claim attempts boosted it
    flags = zone.frames()["flags"][18]
    assert flags & _engine.PY_PG_KERNEL and not flags & _engine.PY_PG_MOVABLE_OPS
    m.check()


def test_high_order_watermark_needs_a_free_block_of_that_order(small):
    m = small
    pfns = m.kernel_alloc_bulk(0, "movable", 10_000)      # stops at min: the order-7 tail is left
    m.kernel_free_bulk(pfns[0:1024:2], 0)                  # 512 free pages that cannot merge
    assert m.kernel_alloc(7, "movable") == 3968            # the tail block
    assert m.page_alloc.zone.nr_free_pages == 512
    # 511 usable pages are far above the low watermark, but no free block has order >= 1.
    err = unchanged(m, lambda: m.kernel_alloc(1, "movable"), OSError)
    assert err.errno == errno.ENOMEM
    assert m.kernel_alloc(0, "movable") in set(int(p) for p in pfns[0:1024:2])
    m.check()


def test_kernel_alloc_returns_enomem_and_changes_nothing_when_below_min(small):
    m = small
    m.kernel_alloc_bulk(0, "movable", 10_000)
    err = unchanged(m, lambda: m.kernel_alloc(0, "unmovable"), OSError)
    assert err.errno == errno.ENOMEM


def test_vmstat_counts_pages_not_calls(machine):
    pfn = machine.kernel_alloc(3, "reclaimable")
    assert machine.vmstat["pgalloc_normal"] == 8
    assert machine.vmstat["nr_free_pages"] == 16384 - 8
    # Claiming an order-10 block left a 512-page block and smaller pieces free of order >= 9:
    # 15 order-10 blocks + one order-9 block.
    assert machine.vmstat["nr_free_pages_blocks"] == 15 * 1024 + 512
    machine.kernel_free(pfn, 3)
    assert machine.vmstat["pgfree"] == 16384 + 8
    assert machine.vmstat["nr_free_pages"] == 16384


@pytest.mark.parametrize("order", range(11))
def test_every_order_round_trips(machine, order):
    pfn = machine.kernel_alloc(order, "unmovable")
    assert pfn % (1 << order) == 0
    machine.check()
    machine.kernel_free(pfn, order)
    machine.check()
    assert machine.page_alloc.zone.nr_free_pages == 16384


# ---- watermarks and min_free_kbytes ------------------------------------------------------

def test_watermarks_of_a_4g_machine_with_thp_enabled():
    m = thpcore.Machine("4G")
    # calculate: sqrt(16 * 4 GiB in kB) = 8192 kB; khugepaged raises it to 11 pageblocks.
    assert m.page_alloc.min_free_kbytes == 22528
    assert m.page_alloc.zone.watermarks() == (5632, 7040, 8448)
    assert m.procfs.read("/proc/sys/vm/min_free_kbytes") == "22528\n"


def test_disabling_thp_recomputes_min_free_kbytes_from_the_current_high_watermark():
    m = thpcore.Machine("4G")
    m.thp.enabled = "never"
    # nr_free_buffer_pages = 1048576 - 8448; isqrt(that * 4 * 16) = 8158
    assert m.page_alloc.min_free_kbytes == 8158
    assert m.page_alloc.zone.watermarks() == (2039, 3087, 4135)
    assert not m.khugepaged_running
    m.thp.enabled = "madvise"
    assert m.page_alloc.min_free_kbytes == 22528
    assert m.khugepaged_running
    # The per-size knob alone can switch PMD THP off too.
    m.sysfs.write("/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/enabled", "never")
    assert m.page_alloc.min_free_kbytes == 8158
    m.sysfs.write("/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/enabled", "always")
    m.thp.enabled = "never"                       # per-size "always" keeps PMD THP on
    assert m.khugepaged_running and m.page_alloc.min_free_kbytes == 22528


def test_small_machine_boots_with_thp_flags_cleared():
    m = thpcore.Machine("256M")
    read = m.sysfs.read
    base = "/sys/kernel/mm/transparent_hugepage"
    assert read(f"{base}/enabled") == "always madvise [never]\n"
    assert read(f"{base}/defrag") == "always defer defer+madvise madvise [never]\n"
    assert read(f"{base}/use_zero_page") == "0\n"
    assert read(f"{base}/khugepaged/defrag") == "0\n"
    assert m.page_alloc.min_free_kbytes == 2048
    m.thp.enabled = "madvise"
    # recommended = min(5632, (65536 - 768) / 20) pages = 3238 pages
    assert m.page_alloc.min_free_kbytes == 3238 * 4


def test_watermark_formulas():
    assert calculate_min_free_kbytes(1 << 20) == 8192
    assert calculate_min_free_kbytes(100) == 128                 # clamped low
    assert calculate_min_free_kbytes(1 << 34) == 262144           # clamped high
    assert calculate_min_free_kbytes(1 << 20, user_min_free_kbytes=10000, current=10000) == 10000
    assert recommended_min_free_kbytes(3, 10 ** 9) == 67584
    assert recommended_min_free_kbytes(1, 2000) == 400
    assert setup_per_zone_wmarks(67584, [3840, 772915, 196608]) == [
        (66, 82, 98), (13416, 16770, 20124), (3412, 4265, 5118)]


def test_user_min_free_kbytes_survives_thp_disable():
    m = thpcore.Machine("4G")
    m.procfs.write("/proc/sys/vm/min_free_kbytes", "65536\n")
    assert m.page_alloc.zone.watermarks()[0] == 16384
    m.thp.enabled = "never"
    assert m.page_alloc.min_free_kbytes == 65536


def test_fragmentation_index():
    area = np.zeros((5, 11), dtype=np.int64)
    assert fragmentation_index(area, 9) == 0
    area[1, 10] = 1
    assert fragmentation_index(area, 9) == -1000
    area[:] = 0
    area[1, 0] = 1000                                # 1000 free single pages
    assert fragmentation_index(area, 9) == 1000 - (1000 + 1000 * 1000 // 512) // 1000


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, exc", [
    ((-1,), ValueError), ((11,), ValueError), (("0",), TypeError), ((True,), TypeError),
    ((0.0,), TypeError), ((0, "bogus"), ValueError), ((0, "highatomic"), ValueError),
    ((0, "isolate"), ValueError), ((0, 3), TypeError), ((0, None), TypeError),
])
def test_kernel_alloc_rejects_bad_arguments(machine, args, exc):
    unchanged(machine, lambda: machine.kernel_alloc(*args), exc)


def test_kernel_free_rejects_everything_that_is_not_an_allocated_block(machine):
    m = machine
    pfn = m.kernel_alloc(2, "unmovable")
    unchanged(m, lambda: m.kernel_free(pfn, 1), ValueError)          # wrong order
    unchanged(m, lambda: m.kernel_free(pfn + 1, 0), ValueError)      # tail frame
    unchanged(m, lambda: m.kernel_free(pfn + 4, 0), ValueError)      # free frame
    unchanged(m, lambda: m.kernel_free(-1, 0), ValueError)
    unchanged(m, lambda: m.kernel_free(1 << 40, 0), ValueError)
    unchanged(m, lambda: m.kernel_free(16384, 0), ValueError)
    unchanged(m, lambda: m.kernel_free("0", 2), TypeError)
    unchanged(m, lambda: m.kernel_free(pfn, 11), ValueError)
    m.kernel_free(pfn, 2)
    unchanged(m, lambda: m.kernel_free(pfn, 2), ValueError)          # double free


def test_kernel_free_bulk_validates_everything_first(machine):
    m = machine
    pfns = m.kernel_alloc_bulk(0, "unmovable", 16)
    unchanged(m, lambda: m.kernel_free_bulk(list(pfns) + [int(pfns[3])], 0), ValueError)
    unchanged(m, lambda: m.kernel_free_bulk(list(pfns[:8]) + [99999], 0), ValueError)
    unchanged(m, lambda: m.kernel_free_bulk(np.array([pfns, pfns]), 0), ValueError)
    m.kernel_free_bulk(pfns, 0)
    m.check()
    assert m.page_alloc.zone.nr_free_pages == 16384


def test_kernel_alloc_bulk_rejects_bad_counts(machine):
    unchanged(machine, lambda: machine.kernel_alloc_bulk(0, "movable", -1), ValueError)
    unchanged(machine, lambda: machine.kernel_alloc_bulk(0, "movable", 1.5), TypeError)
    assert len(machine.kernel_alloc_bulk(0, "movable", 0)) == 0


@pytest.mark.parametrize("kwargs, exc", [
    ({"memory": "3M"}, ValueError), ({"memory": "15M"}, ValueError), ({"memory": "17M"}, ValueError),
    ({"memory": 1.5}, TypeError), ({"memory": "lots"}, ValueError), ({"memory": "16T"}, ValueError),
    ({"kernel": "5.10"}, ValueError), ({"seed": -1}, TypeError), ({"seed": "x"}, TypeError),
    ({"swap": "1.5G"}, ValueError), ({"swap": 100}, ValueError),
    ({"transparent_hugepage": "sometimes"}, ValueError),
])
def test_machine_rejects_bad_configuration(kwargs, exc):
    with pytest.raises(exc):
        thpcore.Machine(**kwargs)


def test_machine_accepts_kernel_style_sizes():
    assert thpcore.Machine("512M").nr_pages == 131072
    assert thpcore.Machine(64 << 20).nr_pages == 16384
    assert thpcore.Machine("1G", swap="1G", kernel="rfc-2022").kernel == "rfc-2022"
