"""thpcore.live: the real Linux backend (ctypes): madvise / process_madvise / pidfd_open on
real processes, the THP sysfs knobs (with snapshots and a machine-wide lock), /proc readers that
share the simulator's parsers, swap files, and the mapping helpers the differential tests use.

Pure Python + ctypes (numpy, already a thpcore dependency, is used for fast page touching when
it is importable).  Everything here acts only on the calling process, on children it forks, on
the THP sysfs knobs it was asked to change (always restored) and on a swap file it created
itself (always swapped off and deleted).

Main pieces
-----------
``thp_settings(**knobs)``
    Context manager writing knobs under /sys/kernel/mm/transparent_hugepage and restoring every
    saved value on exit, also on error.  Knob names are paths relative to the THP root;
    ``khugepaged__max_ptes_none`` is accepted for ``khugepaged/max_ptes_none`` and
    ``hugepages_2048kB__enabled`` for ``hugepages-2048kB/enabled``.
``swap_file(size_bytes)``
    Context manager: swap file in a fresh temporary directory, mkswap, swapon at a high
    priority; swapoff and delete on exit.  Raises :class:`Unsupported` (a pytest skip when
    pytest is importable) when the swap file cannot be enabled.
``Region``
    An anonymous mapping made with libc ``mmap``: madvise / mprotect / munmap on sub-ranges,
    ``write``/``read`` of the first 32-bit int of every 4 KiB page, ``smaps()`` sums,
    ``vmas()`` per-VMA smaps records, ``pagemap()`` raw entries.
``fork_and_run(fn, *args)``
    Runs ``fn`` in a forked child and returns its (pickled) result; re-raises its exception.
``run_fresh(fn, *args)``
    The same in a new interpreter: no copy-on-write sharing with the caller's (THP-backed)
    heap, so a child that counts machine-wide THP events sees only its own.
``ForkedChild(fn, *args)``
    A forked child that can exchange messages with the parent while both are alive.
``vmstat()``, ``meminfo()``, ``smaps_rollup()``, ``prctl()``, ``kpageflags()``
    /proc readers and thin syscall wrappers.

Observed 6.18 facts worth knowing when writing tests (see the live-probe report):
anonymous mmaps are placed top-down and anonymous VMAs with equal flags merge with their
neighbours, so two Regions made one after the other are often ONE VMA in /proc/self/maps;
a hole munmapped inside a region near mmap_base can be refilled by the interpreter's own
mmaps (use ``Region.at`` far below mmap_base before applying destructive advice to holes), and
a huge madvise length (e.g. 1<<62) applies the advice to every VMA above the start, so
MADV_DONTNEED with it wipes the interpreter (probe such lengths only from a region above [stack]
or in a forked child).  ``Region.smaps()`` refuses (``partial="error"``) to sum a VMA that sticks out of the
region unless told ``partial="include"`` or ``partial="exclude"``.  Use ``Region.aligned()``
(which keeps PROT_NONE guards on both sides) to get an isolated, 2 MiB-aligned VMA.
"""

from __future__ import annotations

# The package is split by concern (host, syscalls, readers, pagemap, knobs, features, swap, fork,
# region, snapshot); this module re-exports the public names, so ``thpcore.live.X`` is as before.
from thpcore.constants import (MADV_COLD, MADV_COLLAPSE, MADV_DODUMP, MADV_DOFORK, MADV_DONTDUMP,
                               MADV_DONTFORK, MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE,
                               MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_HUGEPAGE, MADV_KEEPONFORK,
                               MADV_MERGEABLE, MADV_NOHUGEPAGE, MADV_NORMAL, MADV_PAGEOUT, MADV_POPULATE_READ,
                               MADV_POPULATE_WRITE, MADV_RANDOM, MADV_REMOVE, MADV_SEQUENTIAL,
                               MADV_UNMERGEABLE, MADV_WILLNEED, MADV_WIPEONFORK, MAP_ANONYMOUS, MAP_FIXED,
                               MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED,
                               PR_GET_THP_DISABLE, PR_SET_THP_DISABLE, PR_THP_DISABLE_EXCEPT_ADVISED,
                               PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE)
from thpcore.live.features import Unsupported, features
from thpcore.live.fork import Channel, ChildDied, ChildError, ForkedChild, fork_and_run, run_fresh
from thpcore.live.host import HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, THP_ROOT, GiB, KiB, MiB
from thpcore.live.knobs import LOCK_PATH, knob_lock, read_knob, thp_settings, thp_snapshot, write_knob
from thpcore.live.pagemap import decode_pagemap, kpageflags, kpf_names
from thpcore.live.readers import (maps, meminfo, mthp_stats, smaps_rollup, sysfs_read, sysfs_write, vmstat,
                                  vmstat_delta)
from thpcore.live.region import Region
from thpcore.live.snapshot import region_stats
from thpcore.live.swap import SWAP_FLAG_PREFER, SWAP_FLAG_PRIO_MASK, swap_file
from thpcore.live.syscalls import (MADV_HWPOISON, MADV_NAMES, MADV_SOFT_OFFLINE, MAP_FAILED, SYS_mremap,
                                   SYS_pidfd_open, SYS_process_madvise, madvise, pidfd_open, prctl,
                                   process_madvise, raw_madvise, raw_mlock, raw_mmap, raw_mprotect,
                                   raw_mremap, raw_munmap)
from thpcore.proc.pagemap import (KPF_NAMES, PM_FILE, PM_GUARD_REGION, PM_MMAP_EXCLUSIVE, PM_PFN_MASK,
                                  PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP, PM_UFFD_WP)
from thpcore.proc.smaps import parse_smaps

# The exceptions keep the name they are raised and pickled under: thpcore.live.X, not the module
# that defines them (tracebacks, pytest skip reasons and pickles read as before the split).
for _cls in (ChildDied, ChildError, Unsupported):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "Channel", "ChildDied", "ChildError", "ForkedChild", "GiB", "HPAGE_PMD_NR", "HPAGE_PMD_SIZE",
    "KPF_NAMES", "KiB", "LOCK_PATH", "MADV_COLD", "MADV_COLLAPSE", "MADV_DODUMP", "MADV_DOFORK",
    "MADV_DONTDUMP", "MADV_DONTFORK", "MADV_DONTNEED", "MADV_DONTNEED_LOCKED", "MADV_FREE",
    "MADV_GUARD_INSTALL", "MADV_GUARD_REMOVE", "MADV_HUGEPAGE", "MADV_HWPOISON", "MADV_KEEPONFORK",
    "MADV_MERGEABLE", "MADV_NAMES", "MADV_NOHUGEPAGE", "MADV_NORMAL", "MADV_PAGEOUT",
    "MADV_POPULATE_READ", "MADV_POPULATE_WRITE", "MADV_RANDOM", "MADV_REMOVE", "MADV_SEQUENTIAL",
    "MADV_SOFT_OFFLINE", "MADV_UNMERGEABLE", "MADV_WILLNEED", "MADV_WIPEONFORK", "MAP_ANONYMOUS",
    "MAP_FAILED", "MAP_FIXED", "MAP_FIXED_NOREPLACE", "MAP_NORESERVE", "MAP_POPULATE",
    "MAP_PRIVATE", "MAP_SHARED", "MiB", "PAGE_SIZE", "PM_FILE", "PM_GUARD_REGION",
    "PM_MMAP_EXCLUSIVE", "PM_PFN_MASK", "PM_PRESENT", "PM_SOFT_DIRTY", "PM_SWAP", "PM_UFFD_WP",
    "PROT_EXEC", "PROT_NONE", "PROT_READ", "PROT_WRITE", "PR_GET_THP_DISABLE",
    "PR_SET_THP_DISABLE", "PR_THP_DISABLE_EXCEPT_ADVISED", "Region", "SWAP_FLAG_PREFER",
    "SWAP_FLAG_PRIO_MASK", "SYS_mremap", "SYS_pidfd_open", "SYS_process_madvise", "THP_ROOT",
    "Unsupported", "decode_pagemap", "features", "fork_and_run", "knob_lock", "kpageflags",
    "kpf_names", "madvise", "maps", "meminfo", "mthp_stats", "parse_smaps", "pidfd_open", "prctl",
    "process_madvise", "raw_madvise", "raw_mlock", "raw_mmap", "raw_mprotect", "raw_mremap",
    "raw_munmap", "read_knob", "region_stats", "run_fresh", "smaps_rollup", "swap_file",
    "sysfs_read", "sysfs_write", "thp_settings", "thp_snapshot", "vmstat", "vmstat_delta",
    "write_knob",
]
