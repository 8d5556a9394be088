"""Pure-Python reference model of the Linux 6.18 anonymous collapse step (mm/khugepaged.c).

This module is an *oracle*, like :mod:`thpcore.reference.page_alloc`: it is written for
clarity, not speed, and property tests hold the simulator (``thpcore.mm.khugepaged`` and the
Cython engine's ``PageTables.scan_pmd`` / ``scan_regions`` / ``collapse_run`` /
``collapse_copy``) against it.  Its control flow comes from ``mm/khugepaged.c`` (6.18) and
``folio_maybe_mapped_shared()`` (include/linux/mm.h); from the engine it takes only the state
encodings (below), so that the kernel, not the engine, defines the behaviour.  Each function
names the kernel function it models and follows it statement by statement where the order
matters for the result (which check fires first, which counter moves, what a PTE becomes).
Per-PTE logic is plain Python; numpy is not used at all (callers may pass numpy arrays as
storage; they are copied into lists).

Kernel changes up to 6.18 that shape this model: ``folio_maybe_mapped_shared()`` with the
CONFIG_MM_ID tracking (6.15; a large folio counts as shared when more than one mm maps it),
and the removal of the "at least one writable PTE" rule (``SCAN_PAGE_RO``, 6.18: read-only
anonymous regions collapse).

What it covers:

* :func:`hpage_collapse_scan_pmd`: ``find_pmd_or_thp_or_none()`` and the PTE walk of
  ``hpage_collapse_scan_pmd()`` for one PMD range: the swap-entry limit (``max_ptes_swap``),
  none/zero-page PTEs (``max_ptes_none``, and ``userfaultfd_armed()`` making any of them fatal),
  ``folio_maybe_mapped_shared()`` (``max_ptes_shared``), the PG_lru check, the young/referenced
  rule (khugepaged needs one referenced PTE, or half of them when it would swap in), and the
  6.18 removal of the writable requirement (``SCAN_PAGE_RO`` is never returned).  The limits
  apply only when ``cc.is_khugepaged`` (MADV_COLLAPSE ignores them, as in the kernel).  It
  stops where the kernel calls ``collapse_huge_page()``: ``SCAN_SUCCEED`` means "would
  collapse".
* :func:`collapse_huge_page`: the allocation (a caller-given head, or this model's own
  allocator), ``__collapse_huge_page_swapin()``, ``__collapse_huge_page_isolate()``,
  ``__collapse_huge_page_copy()`` + ``__collapse_huge_page_copy_succeeded()``, and installing
  the huge PMD over the deposited (now empty) PTE table, with the MM_ANONPAGES / MM_SWAPENTS
  moves the kernel makes.

What it does not cover (the simulator has no state for it, so these checks cannot fire here):
uffd-wp PTE bits and swap-entry uffd-wp / guard markers (``SCAN_PTE_UFFD_WP``,
``SCAN_PTE_NON_PRESENT`` in the scan), ``vm_normal_page()`` returning NULL (``SCAN_PAGE_NULL``),
non-anonymous folios (``SCAN_PAGE_ANON``), NUMA node_load / ``hpage_collapse_scan_abort()``
(one node, node_reclaim_mode off), page locks (``SCAN_PAGE_LOCK``), extra references such as
GUP pins or the swap cache (``SCAN_PAGE_COUNT``; the model has no swap cache: a swap-in makes an
exclusive page), ``PG_young``/``PG_referenced``/secondary-MMU young bits (only the PTE accessed
bit counts as a reference), memory poison (``SCAN_COPY_MC``), memcg charging, the mmap_lock
drop / VMA revalidation races of ``collapse_huge_page()``, ``folio_pte_batch()`` (an
optimisation with the same result as the per-PTE loop written here), the deferred-split queue,
and the khugepaged thread's mm/VMA walk around the scan (``khugepaged_scan_mm_slot()``).

State and its representation (the simulator's encodings, so tests can feed engine state in):

* A PTE is an int: ``0`` none; bit0 set: present page (bit1 young, bit2 dirty, bit3 write,
  pfn in bits 4..31); ``pte & 0xF == 0x2``: swap entry (slot in bits 4..31);
  ``pte & 0xF == 0x4``: the shared zero page (a *present* PTE in the kernel).
* A PMD entry is an int (``None``: no PMD table page, ``mm_find_pmd()`` fails): ``0`` none;
  kind (bits 0..1) 1: points to a PTE table (id in bits 32..62); 2: huge (bit2 young, bit3
  dirty, bit4 write, head pfn >> 9 in bits 5..31, deposited table id in bits 32..62);
  3: the huge zero page.
* ``struct page`` of every frame: :class:`Frames` (flags with PG_head / PG_tail / PG_lru,
  the block order at heads, the mapcount of each 4 KiB frame -- a PMD mapping counts once in
  each of its 512 frames -- and the content word, 0 meaning all zeroes).
* The swap device: :class:`SwapDevice` (references and content word of each slot).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, MutableSequence, Sequence

from thpcore.reference.page_alloc import ReferenceZone

HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER


class ScanResult(enum.IntEnum):
    """enum scan_result (mm/khugepaged.c, 6.18; SCAN_PAGE_RO is kept there but unused)."""
    SCAN_FAIL = 0
    SCAN_SUCCEED = 1
    SCAN_PMD_NULL = 2
    SCAN_PMD_NONE = 3
    SCAN_PMD_MAPPED = 4
    SCAN_EXCEED_NONE_PTE = 5
    SCAN_EXCEED_SWAP_PTE = 6
    SCAN_EXCEED_SHARED_PTE = 7
    SCAN_PTE_NON_PRESENT = 8
    SCAN_PTE_UFFD_WP = 9
    SCAN_PTE_MAPPED_HUGEPAGE = 10
    SCAN_PAGE_RO = 11
    SCAN_LACK_REFERENCED_PAGE = 12
    SCAN_PAGE_NULL = 13
    SCAN_SCAN_ABORT = 14
    SCAN_PAGE_COUNT = 15
    SCAN_PAGE_LRU = 16
    SCAN_PAGE_LOCK = 17
    SCAN_PAGE_ANON = 18
    SCAN_PAGE_COMPOUND = 19
    SCAN_ANY_PROCESS = 20
    SCAN_VMA_NULL = 21
    SCAN_VMA_CHECK = 22
    SCAN_ADDRESS_RANGE = 23
    SCAN_DEL_PAGE_LRU = 24
    SCAN_ALLOC_HUGE_PAGE_FAIL = 25
    SCAN_CGROUP_CHARGE_FAIL = 26
    SCAN_TRUNCATED = 27
    SCAN_PAGE_HAS_PRIVATE = 28
    SCAN_STORE_FAILED = 29
    SCAN_COPY_MC = 30
    SCAN_PAGE_FILLED = 31


# ---------------------------------------------------------------------------------------------
# Encodings (see the module docstring; the tests check them against the engine's constants)
# ---------------------------------------------------------------------------------------------

PTE_PRESENT = 0x1
PTE_YOUNG = 0x2
PTE_DIRTY = 0x4
PTE_WRITE = 0x8
PTE_PFN_SHIFT = 4
PTE_KIND_MASK = 0xF
PTE_KIND_SWAP = 0x2
PTE_KIND_ZERO = 0x4

PMD_KIND_MASK = 0x3
PMD_KIND_TABLE = 0x1
PMD_KIND_HUGE = 0x2
PMD_KIND_HUGE_ZERO = 0x3
PMD_YOUNG = 0x4
PMD_DIRTY = 0x8
PMD_WRITE = 0x10
PMD_PFN_SHIFT = 5
PMD_TABLE_SHIFT = 32

PG_BUDDY = 0x01
PG_HEAD = 0x02
PG_TAIL = 0x04
PG_LRU = 0x08

MAX_PAGE_ORDER = 10
MIGRATE_MOVABLE = 1
ALLOC_WMARK_LOW = 1
ALLOC_NOFRAGMENT = 0x100


# ---- pte_t helpers (include/linux/pgtable.h, swapops.h, x86 pgtable.h) ----------------------

def pte_none(pte: int) -> bool:
    return pte == 0


def is_zero_pfn_pte(pte: int) -> bool:
    """is_zero_pfn(pte_pfn(pte)) for a present PTE: it maps the shared zero page."""
    return (pte & PTE_KIND_MASK) == PTE_KIND_ZERO


def pte_present(pte: int) -> bool:
    return bool(pte & PTE_PRESENT) or is_zero_pfn_pte(pte)


def is_swap_pte(pte: int) -> bool:
    """!pte_none() && !pte_present(): here always a real swap entry (no markers modelled)."""
    return not pte_none(pte) and not pte_present(pte)


def pte_none_or_zero(pte: int) -> bool:
    return pte_none(pte) or (pte_present(pte) and is_zero_pfn_pte(pte))


def pte_young(pte: int) -> bool:
    return bool(pte & PTE_YOUNG)


def pte_write(pte: int) -> bool:
    return bool(pte & PTE_WRITE)


def pte_pfn(pte: int) -> int:
    return pte >> PTE_PFN_SHIFT


def swp_offset(pte: int) -> int:
    return pte >> PTE_PFN_SHIFT


def mk_pte(pfn: int, young: bool, dirty: bool, write: bool) -> int:
    return ((pfn << PTE_PFN_SHIFT) | PTE_PRESENT | (PTE_YOUNG if young else 0)
            | (PTE_DIRTY if dirty else 0) | (PTE_WRITE if write else 0))


def mk_huge_pmd(head: int, deposit: int, young: bool, dirty: bool, write: bool) -> int:
    return ((deposit << PMD_TABLE_SHIFT) | ((head >> HPAGE_PMD_ORDER) << PMD_PFN_SHIFT)
            | (PMD_YOUNG if young else 0) | (PMD_DIRTY if dirty else 0)
            | (PMD_WRITE if write else 0) | PMD_KIND_HUGE)


def pmd_table(pmd: int) -> int:
    """pmd_pgtable(): the PTE table a table entry points to (or a huge entry deposited)."""
    return pmd >> PMD_TABLE_SHIFT


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------

def _as_list(seq) -> list[int]:
    """A plain list of Python ints (numpy arrays are converted, other sequences copied)."""
    return seq.tolist() if hasattr(seq, "tolist") else [int(x) for x in seq]


class Frames:
    """``struct page`` / ``struct folio`` state of every frame, as plain Python lists.

    ``flags``, ``order``, ``mapcount``, ``content``: one entry per 4 KiB frame (any sequence
    of ints is accepted and copied).  ``mm_count`` answers "how many mms map the large folio
    headed here" (the question ``folio->_mm_ids`` answers in the kernel); the frame table alone
    cannot, so a scan that meets a large folio mapped more than once without it raises.
    ``zone`` (optional, a :class:`thpcore.reference.page_alloc.ReferenceZone` of the same size)
    makes allocations and frees go through the reference buddy allocator; without it, new
    frames are appended past the end of the table (scratch frames) and frees are only recorded
    in :attr:`freed`.
    """

    def __init__(self, flags: Sequence[int], order: Sequence[int], mapcount: Sequence[int],
                 content: Sequence[int], mm_count: Mapping[int, int] | Callable[[int], int] | None = None,
                 zone=None):
        self.flags = _as_list(flags)
        self.order = _as_list(order)
        self.mapcount = _as_list(mapcount)
        self.content = _as_list(content)
        if not len(self.flags) == len(self.order) == len(self.mapcount) == len(self.content):
            raise ValueError("frame arrays differ in length")
        self.nr_pages = len(self.flags)
        self._mm_count = mm_count
        self.zone = zone
        self.freed: list[tuple[int, int]] = []      # (pfn, order) blocks freed, in order

    # ---- page_folio() and friends --------------------------------------------------------------

    def compound_head(self, pfn: int) -> int:
        """page_folio(): the head frame of the folio pfn belongs to (folios are naturally
        aligned, so the head is pfn rounded down to the folio's order)."""
        if not self.flags[pfn] & PG_TAIL:
            return pfn
        for order in range(1, MAX_PAGE_ORDER + 1):
            head = pfn & ~((1 << order) - 1)
            if self.flags[head] & PG_HEAD and self.order[head] >= order:
                return head
        raise ValueError(f"frame {pfn} is a tail page without a head")

    def folio_test_large(self, head: int) -> bool:
        return self.order[head] > 0

    def folio_nr_pages(self, head: int) -> int:
        return 1 << self.order[head]

    def folio_test_lru(self, head: int) -> bool:
        return bool(self.flags[head] & PG_LRU)

    def folio_mapped(self, head: int) -> bool:
        for p in range(head, head + self.folio_nr_pages(head)):
            if self.mapcount[p] > 0:
                return True
        return False

    def folio_mapcount_at_most_one(self, head: int) -> bool:
        """folio_mapcount(folio) <= 1, for a large folio.  The frame table counts a PMD mapping
        in each of its frames, so the per-frame sum is >= folio_mapcount() and equal to it for
        PTE mappings; "<= 1" agrees either way."""
        total = 0
        for p in range(head, head + self.folio_nr_pages(head)):
            total += self.mapcount[p]
            if total > 1:
                return False
        return True

    def folio_nr_mms(self, head: int) -> int:
        mc = self._mm_count
        if mc is None:
            raise ValueError(f"large folio at {head} is mapped more than once: pass mm_count "
                             "(how many mms map it) to decide folio_maybe_mapped_shared()")
        return int(mc(head) if callable(mc) else mc.get(head, 1))

    def folio_maybe_mapped_shared(self, head: int) -> bool:
        """folio_maybe_mapped_shared() (include/linux/mm.h, CONFIG_MM_ID):
        small folio: mapcount > 1; large folio: a single mapping is exclusive, otherwise the
        folio is shared iff it is mapped into more than one mm (the MM_ID tracking, exact while
        no more than two mms map the folio at once)."""
        if not self.folio_test_large(head):
            return self.mapcount[head] > 1
        if self.folio_mapcount_at_most_one(head):
            return False
        return self.folio_nr_mms(head) > 1

    # ---- the allocator -------------------------------------------------------------------------

    def alloc_folio(self, order: int) -> int:
        """__folio_alloc(GFP_*, order) of a movable user folio: prep_new_page() state
        (head/tail flags, PG_lru, zeroed content, unmapped).  -1 when the zone refuses."""
        if self.zone is not None:
            pfn = self.zone.alloc(order, MIGRATE_MOVABLE, ALLOC_WMARK_LOW | ALLOC_NOFRAGMENT, PG_LRU)
            if pfn < 0:
                return -1
        else:
            n = 1 << order
            pfn = (self.nr_pages + n - 1) & ~(n - 1)
            grow = pfn + n - self.nr_pages
            self.flags.extend([0] * grow)
            self.order.extend([0] * grow)
            self.mapcount.extend([0] * grow)
            self.content.extend([0] * grow)
            self.nr_pages += grow
        for p in range(pfn, pfn + (1 << order)):
            self.flags[p] = PG_TAIL | PG_LRU
            self.order[p] = 0
            self.mapcount[p] = 0
            self.content[p] = 0
        self.flags[pfn] = PG_HEAD | PG_LRU
        self.order[pfn] = order
        return pfn

    def prep_given_folio(self, head: int, order: int) -> None:
        """The state prep_new_page() leaves on a folio some other allocator handed out."""
        for p in range(head, head + (1 << order)):
            if self.flags[p] & (PG_HEAD | PG_TAIL):
                raise ValueError(f"frame {p} of the new folio at {head} is in use")
            self.flags[p] = PG_TAIL | PG_LRU
            self.order[p] = 0
            self.mapcount[p] = 0
            self.content[p] = 0
        self.flags[head] = PG_HEAD | PG_LRU
        self.order[head] = order

    def free_folio(self, head: int) -> None:
        """free_unref_folios() / __free_pages_ok(): the frames lose their page flags."""
        order = self.order[head]
        for p in range(head, head + (1 << order)):
            self.flags[p] = 0
            self.order[p] = 0
            self.mapcount[p] = 0
        self.freed.append((head, order))
        if self.zone is not None:
            self.zone.free(head, order)

    def folio_put_unmapped(self, head: int) -> None:
        """The last reference of a folio without mappings goes: free it."""
        if not self.folio_mapped(head):
            self.free_folio(head)


class SwapDevice:
    """One swap device: ``swap_map[slot]`` (references: swap PTEs pointing at the slot) and
    the content word each slot holds.  Either may be a sequence or a mapping slot -> value."""

    def __init__(self, swap_map, swap_content):
        self.swap_map = dict(swap_map) if isinstance(swap_map, Mapping) else \
            {i: int(c) for i, c in enumerate(swap_map) if c}
        self.swap_content = swap_content
        self.slots_freed: list[int] = []

    def read(self, slot: int) -> int:
        return int(self.swap_content[slot])

    def swap_free(self, slot: int) -> None:
        """swap_free() / put_swap_folio(): drop one reference; the slot is free at zero."""
        n = self.swap_map.get(slot, 0)
        if n <= 0:
            raise ValueError(f"swap slot {slot} has no reference to drop")
        if n == 1:
            del self.swap_map[slot]
            self.slots_freed.append(slot)
        else:
            self.swap_map[slot] = n - 1


@dataclass
class CollapseControl:
    """struct collapse_control (is_khugepaged) plus the khugepaged sysfs knobs the scan reads
    (globals in the kernel: khugepaged_max_ptes_none/_swap/_shared, with their defaults)."""
    is_khugepaged: bool
    max_ptes_none: int = HPAGE_PMD_NR - 1
    max_ptes_swap: int = HPAGE_PMD_NR // 8
    max_ptes_shared: int = HPAGE_PMD_NR // 2


@dataclass
class ScanOutcome:
    """The result and the counters trace_mm_khugepaged_scan_pmd() reports (as far as the scan
    got), and the vm event it counted (THP_SCAN_EXCEED_*), if any."""
    result: ScanResult
    none_or_zero: int = 0
    unmapped: int = 0
    shared: int = 0
    referenced: int = 0
    writable: bool = False
    event: str | None = None


@dataclass
class CollapseOutcome:
    """What collapse_huge_page() did: the result; on success the new folio's head and the huge
    PMD entry now installed; the mm counter moves; and the swap-ins it made."""
    result: ScanResult
    head: int = -1
    pmd: int = 0
    anon_rss_delta: int = 0         # MM_ANONPAGES
    swap_ents_delta: int = 0        # MM_SWAPENTS
    swapped_in: int = 0
    isolate: ScanOutcome | None = None
    freed: list[tuple[int, int]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------------------------

def find_pmd_or_thp_or_none(pmd: int | None) -> ScanResult:
    """find_pmd_or_thp_or_none(): no PMD table page -> SCAN_PMD_NULL; pmd_none ->
    SCAN_PMD_NONE; pmd_trans_huge (a THP or the huge zero page) -> SCAN_PMD_MAPPED."""
    if pmd is None:                                  # mm_find_pmd() found no PMD table
        return ScanResult.SCAN_PMD_NULL
    if pmd == 0:                                     # pmd_none()
        return ScanResult.SCAN_PMD_NONE
    kind = pmd & PMD_KIND_MASK
    if kind in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):  # pmd_trans_huge()
        return ScanResult.SCAN_PMD_MAPPED
    if kind != PMD_KIND_TABLE:                       # pmd_bad()
        return ScanResult.SCAN_PMD_NULL
    return ScanResult.SCAN_SUCCEED


def hpage_collapse_scan_pmd(pmd: int | None, ptes: Sequence[int], frames: Frames,
                            cc: CollapseControl, userfaultfd_armed: bool = False) -> ScanOutcome:
    """hpage_collapse_scan_pmd() up to the point where it would call collapse_huge_page().

    ``pmd`` is the region's PMD entry (``None``: no PMD table page), ``ptes`` the 512 entries
    of the PTE table it points to (ignored unless it points to one).  Returns SCAN_SUCCEED
    when the kernel would go on to collapse_huge_page()."""
    out = ScanOutcome(ScanResult.SCAN_FAIL)
    result = find_pmd_or_thp_or_none(pmd)
    if result != ScanResult.SCAN_SUCCEED:
        out.result = result                          # goto out
        return out
    # pte_offset_map_lock() cannot fail here: nothing frees the table under us.
    for i in range(HPAGE_PMD_NR):
        pteval = int(ptes[i])                        # ptep_get()
        if is_swap_pte(pteval):
            out.unmapped += 1
            if not cc.is_khugepaged or out.unmapped <= cc.max_ptes_swap:
                # pte_swp_uffd_wp_any() and guard markers: not modelled.
                continue
            out.result = ScanResult.SCAN_EXCEED_SWAP_PTE
            out.event = "thp_scan_exceed_swap_pte"
            return out                               # goto out_unmap
        if pte_none_or_zero(pteval):
            out.none_or_zero += 1
            if not userfaultfd_armed and (not cc.is_khugepaged
                                          or out.none_or_zero <= cc.max_ptes_none):
                continue
            out.result = ScanResult.SCAN_EXCEED_NONE_PTE
            out.event = "thp_scan_exceed_none_pte"
            return out
        # pte_uffd_wp(): not modelled.
        if pte_write(pteval):
            out.writable = True                      # only traced in 6.18
        pfn = pte_pfn(pteval)                        # vm_normal_page(): a normal anon page
        folio = frames.compound_head(pfn)            # page_folio()
        # folio_test_anon(): every user folio here is anonymous.
        # "We treat a single page as shared if any part of the THP is shared."
        if frames.folio_maybe_mapped_shared(folio):
            out.shared += 1
            if cc.is_khugepaged and out.shared > cc.max_ptes_shared:
                out.result = ScanResult.SCAN_EXCEED_SHARED_PTE
                out.event = "thp_scan_exceed_share_pte"
                return out
        # folio_nid() / hpage_collapse_scan_abort(): one node, never aborts.
        if not frames.folio_test_lru(folio):
            out.result = ScanResult.SCAN_PAGE_LRU
            return out
        # folio_test_locked(), is_refcount_suitable(): no locks, no extra references.
        if cc.is_khugepaged and pte_young(pteval):   # || folio young/referenced: not modelled
            out.referenced += 1
    if cc.is_khugepaged and (out.referenced == 0
                             or (out.unmapped and out.referenced < HPAGE_PMD_NR // 2)):
        out.result = ScanResult.SCAN_LACK_REFERENCED_PAGE
    else:
        out.result = ScanResult.SCAN_SUCCEED
    return out


# ---------------------------------------------------------------------------------------------
# The collapse
# ---------------------------------------------------------------------------------------------

def collapse_huge_page_swapin(ptes: MutableSequence[int], frames: Frames, swap: SwapDevice,
                              vma_write: bool) -> tuple[ScanResult, int]:
    """__collapse_huge_page_swapin(): do_swap_page() on every swap PTE, as a read fault.
    Returns (result, pages swapped in).  do_swap_page() here: a fresh exclusive page (no swap
    cache), mapped young, writable if the VMA is, clean; the slot loses a reference."""
    swapped_in = 0
    for i in range(HPAGE_PMD_NR):
        pteval = int(ptes[i])
        if not is_swap_pte(pteval):
            continue
        slot = swp_offset(pteval)
        pfn = frames.alloc_folio(0)
        if pfn < 0:
            return ScanResult.SCAN_FAIL, swapped_in        # VM_FAULT_OOM is a VM_FAULT_ERROR
        frames.content[pfn] = swap.read(slot)              # swap_read_folio()
        frames.mapcount[pfn] = 1                           # folio_add_new_anon_rmap()
        swap.swap_free(slot)
        ptes[i] = mk_pte(pfn, young=True, dirty=False, write=vma_write)
        swapped_in += 1
    return ScanResult.SCAN_SUCCEED, swapped_in


def collapse_huge_page_isolate(ptes: Sequence[int], frames: Frames, cc: CollapseControl,
                               userfaultfd_armed: bool = False) -> ScanOutcome:
    """__collapse_huge_page_isolate(): the checks again, under the PTE lock, with the PMD
    cleared. Isolating from the LRU is transient here (the pages are freed or put back by the
    caller), so only the verdict and the counters are returned."""
    out = ScanOutcome(ScanResult.SCAN_FAIL)
    compound_pagelist: list[int] = []
    for i in range(HPAGE_PMD_NR):
        pteval = int(ptes[i])
        if pte_none_or_zero(pteval):
            out.none_or_zero += 1
            if not userfaultfd_armed and (not cc.is_khugepaged
                                          or out.none_or_zero <= cc.max_ptes_none):
                continue
            out.result = ScanResult.SCAN_EXCEED_NONE_PTE
            out.event = "thp_scan_exceed_none_pte"
            return out
        if not pte_present(pteval):
            out.result = ScanResult.SCAN_PTE_NON_PRESENT
            return out
        folio = frames.compound_head(pte_pfn(pteval))
        if frames.folio_maybe_mapped_shared(folio):
            out.shared += 1
            if cc.is_khugepaged and out.shared > cc.max_ptes_shared:
                out.result = ScanResult.SCAN_EXCEED_SHARED_PTE
                out.event = "thp_scan_exceed_share_pte"
                return out
        if not (frames.folio_test_large(folio) and folio in compound_pagelist):
            # folio_trylock(), is_refcount_suitable(): always succeed here.
            if not frames.folio_test_lru(folio):             # folio_isolate_lru() fails
                out.result = ScanResult.SCAN_DEL_PAGE_LRU
                return out
            if frames.folio_test_large(folio):
                compound_pagelist.append(folio)
        if cc.is_khugepaged and pte_young(pteval):
            out.referenced += 1
        if pte_write(pteval):
            out.writable = True
    if cc.is_khugepaged and not out.referenced:
        out.result = ScanResult.SCAN_LACK_REFERENCED_PAGE
    else:
        out.result = ScanResult.SCAN_SUCCEED
    return out


def collapse_huge_page_copy(ptes: MutableSequence[int], frames: Frames, head: int) -> int:
    """__collapse_huge_page_copy() + __collapse_huge_page_copy_succeeded(). Returns the
    MM_ANONPAGES increment (one per none or zero-page PTE: the new folio now backs them)."""
    # The copy: clear_user_highpage() for none/zero, copy_mc_user_highpage() otherwise.
    for i in range(HPAGE_PMD_NR):
        pteval = int(ptes[i])
        if pte_none_or_zero(pteval):
            frames.content[head + i] = 0
        else:
            frames.content[head + i] = frames.content[pte_pfn(pteval)]
    # ... succeeded: release the source pages, clear the PTEs.
    anon_rss = 0
    compound: list[int] = []
    for i in range(HPAGE_PMD_NR):
        pteval = int(ptes[i])
        if pte_none_or_zero(pteval):
            anon_rss += 1                                   # add_mm_counter(MM_ANONPAGES, 1)
            if pte_none(pteval):
                continue
            ptes[i] = 0                                     # ptep_clear() of the zero page
        else:
            src = frames.compound_head(pte_pfn(pteval))
            ptes[i] = 0                                     # clear_ptes()
            frames.mapcount[pte_pfn(pteval)] -= 1           # folio_remove_rmap_ptes()
            if not frames.folio_test_large(src):
                # release_pte_folio() puts it back; free_swap_cache() + folio_put_refs() drop
                # the mapping's reference: the page goes when nothing else maps it.
                frames.folio_put_unmapped(src)
            elif src not in compound:
                compound.append(src)
    for src in compound:                                    # the compound_pagelist loop
        frames.folio_put_unmapped(src)                      # folio_putback_lru() + last put
    return anon_rss


def collapse_huge_page(pmd: int, ptes: MutableSequence[int], frames: Frames, cc: CollapseControl,
                       unmapped: int, swap: SwapDevice | None = None, vma_write: bool = True,
                       new_head: int | None = None, userfaultfd_armed: bool = False) -> CollapseOutcome:
    """collapse_huge_page() for a region hpage_collapse_scan_pmd() passed (``unmapped``: the
    swap PTEs it counted).  ``pmd`` is the region's table entry; ``ptes`` its table, which is
    modified in place (on success it is the deposited, empty table).  ``new_head``: the folio
    the caller's allocator returned (the frames must be free); ``None`` allocates with
    :meth:`Frames.alloc_folio`.  On success the outcome's ``pmd`` is the new huge PMD entry."""
    out = CollapseOutcome(ScanResult.SCAN_FAIL)
    freed_before = len(frames.freed)
    # alloc_charge_folio()
    if new_head is None:
        head = frames.alloc_folio(HPAGE_PMD_ORDER)
        if head < 0:
            out.result = ScanResult.SCAN_ALLOC_HUGE_PAGE_FAIL   # THP_COLLAPSE_ALLOC_FAILED
            return out
    else:
        head = int(new_head)
        frames.prep_given_folio(head, HPAGE_PMD_ORDER)
    # hugepage_vma_revalidate(), find_pmd_or_thp_or_none(): nothing changed meanwhile.
    if unmapped:
        if swap is None:
            raise ValueError("swap entries to fault in, but no swap device given")
        result, out.swapped_in = collapse_huge_page_swapin(ptes, frames, swap, vma_write)
        out.anon_rss_delta += out.swapped_in                # do_swap_page(): MM_ANONPAGES++
        out.swap_ents_delta -= out.swapped_in               # ... MM_SWAPENTS--
        if result != ScanResult.SCAN_SUCCEED:
            frames.free_folio(head)                         # folio_put()
            out.result = result
            out.freed = frames.freed[freed_before:]
            return out
    # pmdp_collapse_flush(), then under the PTE lock:
    isolate = collapse_huge_page_isolate(ptes, frames, cc, userfaultfd_armed)
    out.isolate = isolate
    if isolate.result != ScanResult.SCAN_SUCCEED:
        frames.free_folio(head)                             # pmd_populate() back; folio_put()
        out.result = isolate.result
        out.freed = frames.freed[freed_before:]
        return out
    out.anon_rss_delta += collapse_huge_page_copy(ptes, frames, head)
    # __folio_mark_uptodate(); mk_huge_pmd(vm_page_prot: accessed on x86), pmd_mkdirty(),
    # maybe_pmd_mkwrite(); folio_add_new_anon_rmap(RMAP_EXCLUSIVE); deposit; set_pmd_at().
    for p in range(head, head + HPAGE_PMD_NR):
        frames.mapcount[p] += 1
    out.head = head
    out.pmd = mk_huge_pmd(head, pmd_table(pmd), young=True, dirty=True, write=vma_write)
    out.result = ScanResult.SCAN_SUCCEED
    out.freed = frames.freed[freed_before:]
    return out


# ---------------------------------------------------------------------------------------------
# Benchmarks: the same work as benchmarks/test_bench_collapse.py, in this reference
# ---------------------------------------------------------------------------------------------

def _populated_regions(n_regions: int, zone=None, hole_last: bool = False):
    """n_regions PTE tables, each mapping 512 (or 511, the last PTE none) exclusive order-0
    pages written by the process: present, young, dirty, writable, mapcount 1, PG_lru, each
    with its own content word.  With a zone, the pages come from it (order-0 movable
    allocations); without, they are frames 0.. in order."""
    per = HPAGE_PMD_NR - 1 if hole_last else HPAGE_PMD_NR
    if zone is not None:
        nr = zone.nr_pages
        flags, order, mapcount, content = [0] * nr, [0] * nr, [0] * nr, [0] * nr
    else:
        nr = n_regions * HPAGE_PMD_NR
        flags, order, mapcount, content = ([PG_HEAD | PG_LRU] * nr, [0] * nr, [1] * nr,
                                           [0] * nr)
    tables = []
    next_pfn = 0
    for r in range(n_regions):
        ptes = [0] * HPAGE_PMD_NR
        for i in range(per):
            if zone is not None:
                pfn = zone.alloc(0, MIGRATE_MOVABLE, ALLOC_WMARK_LOW | ALLOC_NOFRAGMENT, PG_LRU)
                if pfn < 0:
                    raise MemoryError("reference zone too small for the benchmark")
                flags[pfn], mapcount[pfn] = PG_HEAD | PG_LRU, 1
            else:
                pfn, next_pfn = next_pfn, next_pfn + 1
            content[pfn] = (r * HPAGE_PMD_NR + i) | 1
            ptes[i] = mk_pte(pfn, young=True, dirty=True, write=True)
        tables.append(ptes)
    frames = Frames(flags, order, mapcount, content, zone=zone)
    pmds = [(r << PMD_TABLE_SHIFT) | PMD_KIND_TABLE for r in range(n_regions)]
    return pmds, tables, frames


def bench_scan(n_regions: int = 1536, rounds: int = 3) -> float:
    """Reference khugepaged scans, 2 MiB regions per second (best of ``rounds``).

    Inputs, as in ``benchmarks/test_bench_collapse.py::test_scan_regions`` (1536 regions there):
    each region's PTE table maps 511 exclusive, young, dirty, writable order-0 pages and its
    last PTE is none; khugepaged's control with max_ptes_none=0 (swap 64, shared 256 by
    default), so every scan reads all 512 PTEs and ends SCAN_EXCEED_NONE_PTE at the last one.
    Timed: :func:`hpage_collapse_scan_pmd` over every region (PMD check + PTE walk + folio
    lookups).  Not timed: building the tables.  The engine's figure also includes the
    simulator's khugepaged pass around the scan (cursor, events, cost charging), which this
    reference leaves out, so the comparison flatters the reference slightly."""
    pmds, tables, frames = _populated_regions(n_regions, hole_last=True)
    cc = CollapseControl(is_khugepaged=True, max_ptes_none=0)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for pmd, ptes in zip(pmds, tables):
            out = hpage_collapse_scan_pmd(pmd, ptes, frames, cc)
        best = min(best, time.perf_counter() - t0)
        assert out.result == ScanResult.SCAN_EXCEED_NONE_PTE and out.none_or_zero == 1
    return n_regions / best


def bench_collapse(n_regions: int = 256, rounds: int = 3, with_allocator: bool = True) -> float:
    """Reference MADV_COLLAPSE of fully populated regions, 2 MiB regions per second (best of
    ``rounds``).

    Inputs, as in ``benchmarks/test_bench_collapse.py::test_madv_collapse`` (256 regions there)
    and ``thpcore bench``'s MADV_COLLAPSE row: each region maps 512 exclusive order-0 pages the
    process wrote (distinct content words).  Timed, per region: the MADV_COLLAPSE scan
    (:func:`hpage_collapse_scan_pmd` without limits) and :func:`collapse_huge_page`: allocate
    an order-9 folio, isolate, copy 512 content words, release the 512 old pages, install the
    PMD.  With ``with_allocator`` (the default, like for like with the engine, which allocates
    and frees in its buddy allocator) the THP comes from, and the old pages go back to, the
    pure-Python :class:`~thpcore.reference.page_alloc.ReferenceZone`; without it, allocation
    is an append and frees are only recorded.  Not timed: faulting the pages in (the engine
    benchmark's setup), the madvise() argument checks and VMA walk."""
    best = float("inf")
    for _ in range(rounds):
        zone = None
        if with_allocator:
            zone = ReferenceZone(2 * n_regions * HPAGE_PMD_NR + 8 * HPAGE_PMD_NR)
        pmds, tables, frames = _populated_regions(n_regions, zone=zone)
        cc = CollapseControl(is_khugepaged=False)
        t0 = time.perf_counter()
        for pmd, ptes in zip(pmds, tables):
            scan = hpage_collapse_scan_pmd(pmd, ptes, frames, cc)
            if scan.result == ScanResult.SCAN_SUCCEED:
                out = collapse_huge_page(pmd, ptes, frames, cc, scan.unmapped)
        best = min(best, time.perf_counter() - t0)
        assert out.result == ScanResult.SCAN_SUCCEED
    return n_regions / best
