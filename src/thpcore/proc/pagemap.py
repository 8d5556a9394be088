"""The binary /proc formats: the /proc/PID/pagemap entry layout (fs/proc/task_mmu.c,
Documentation/admin-guide/mm/pagemap.rst) and the /proc/kpageflags bit numbers
(include/uapi/linux/kernel-page-flags.h).  Defined here once for the simulator's pagemap
(task_mmu), the live readers (thpcore.live), snapshots and the CLIs; the engine's
scan_pagemap (_engine.pyx) keeps its own nogil copies of the few bits it tests, which
tests/proc/test_procfs.py checks against these.  A leaf of the proc floor: imports nothing."""

# /proc/PID/pagemap: one 64-bit entry per virtual page
PM_PFN_BITS = 55
PM_PFN_MASK = (1 << PM_PFN_BITS) - 1        # bits 0-54: pfn (present) or swap type + offset
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61                           # file-backed or shared anonymous
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63
# a swapped page's bits 0-54: swp_type | swp_offset << MAX_SWAPFILES_SHIFT
PM_SWAP_OFFSET_SHIFT = 5                    # MAX_SWAPFILES_SHIFT
PM_SWAP_TYPE_MASK = (1 << PM_SWAP_OFFSET_SHIFT) - 1

# /proc/kpageflags: one 64-bit word of KPF_* bits per page frame
KPF_LOCKED = 0
KPF_ERROR = 1
KPF_REFERENCED = 2
KPF_UPTODATE = 3
KPF_DIRTY = 4
KPF_LRU = 5
KPF_ACTIVE = 6
KPF_SLAB = 7
KPF_WRITEBACK = 8
KPF_RECLAIM = 9
KPF_BUDDY = 10
KPF_MMAP = 11
KPF_ANON = 12
KPF_SWAPCACHE = 13
KPF_SWAPBACKED = 14
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_UNEVICTABLE = 18
KPF_HWPOISON = 19
KPF_NOPAGE = 20
KPF_KSM = 21
KPF_THP = 22
KPF_OFFLINE = 23
KPF_ZERO_PAGE = 24
KPF_IDLE = 25
KPF_PGTABLE = 26

#: {bit: name without the KPF_ prefix}, in bit order.
KPF_NAMES = {v: k[4:] for k, v in list(globals().items()) if k.startswith("KPF_")}
