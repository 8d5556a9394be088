"""The capture side of process snapshots: read a live process's anonymous VMAs and page states
(``capture``, ``save``: `thpcore snapshot PID -o snap.npz`) and count them per 2 MiB region
(``region_stats``).  The file format's other half, rebuilding a capture as a simulated process,
is thpcore.snapshot (which knows nothing of the live host)."""

from __future__ import annotations

import os
import re

import numpy as np

from thpcore._engine import REGION_FIELDS, scan_pagemap
from thpcore.live.knobs import read_knob
from thpcore.live.pagemap import _pread_u64, _read_pagemap
from thpcore.proc.smaps import parse_smaps
from thpcore.snapshot import PFN_MASK, PM_PRESENT

THP_KNOBS = ("enabled", "defrag", "use_zero_page", "shrink_underused", "khugepaged/defrag",
             "khugepaged/max_ptes_none", "khugepaged/max_ptes_swap", "khugepaged/max_ptes_shared",
             "khugepaged/pages_to_scan", "khugepaged/scan_sleep_millisecs",
             "khugepaged/alloc_sleep_millisecs")


def capture(pid: int) -> dict[str, np.ndarray]:
    """Read a live process's anonymous VMAs and page states (needs root for pfns)."""
    if os.geteuid() != 0:
        raise PermissionError("reading page frame numbers from /proc/PID/pagemap and "
                              "/proc/kpageflags needs root (CAP_SYS_ADMIN); run as root")
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessLookupError(3, f"No such process: {pid}")
    vmas = [v for v in parse_smaps(open(f"/proc/{pid}/smaps").read())
            if v["perms"][3] == "p" and v["inode"] == 0 and v["name"] in ("", "[heap]", "[stack]")
            and v["perms"][:3] != "---"]
    starts = np.array([v["start"] for v in vmas], dtype=np.uint64)
    ends = np.array([v["end"] for v in vmas], dtype=np.uint64)
    flags = np.array([(1 if v["perms"][0] == "r" else 0) | (2 if v["perms"][1] == "w" else 0)
                      | (16 if "hg" in v["VmFlags"] else 0) | (32 if "nh" in v["VmFlags"] else 0)
                      for v in vmas], dtype=np.uint8)
    pm = _read_pagemap(pid, starts, ends)
    present = (pm & PM_PRESENT) != 0
    pfns = (pm & PFN_MASK).astype(np.int64)
    kflags = np.zeros(pm.size, dtype=np.uint64)
    kcount = np.zeros(pm.size, dtype=np.uint64)
    if present.any() and os.access("/proc/kpageflags", os.R_OK):
        kflags[present] = _pread_u64("/proc/kpageflags", pfns[present])
        kcount[present] = _pread_u64("/proc/kpagecount", pfns[present])
    status = open(f"/proc/{pid}/status").read()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    memtotal = int(re.search(r"^MemTotal:\s+(\d+)", open("/proc/meminfo").read(), re.M).group(1))
    return {
        "pid": np.int64(pid), "uid": np.int64(uid),
        "comm": np.array(open(f"/proc/{pid}/comm").read().strip()),
        "vma_start": starts, "vma_end": ends, "vma_flags": flags,
        "pagemap": pm, "kpageflags": kflags, "kpagecount": kcount,
        "knobs": np.array([f"{k}={read_knob(k)}" for k in THP_KNOBS]),
        "memtotal_kb": np.int64(memtotal),
    }


def save(pid: int, path: str) -> dict:
    snap = capture(pid)
    np.savez_compressed(path, **snap)
    return snap


def region_stats(pid: int) -> list[dict]:
    """Per anonymous VMA and 2 MiB region of a live process: present / swapped / none / zero /
    shared / PTE-mapped THP / PMD-mapped page counts, from pagemap + kpageflags + kpagecount
    (root), classified by the engine's scan_pagemap (the simulator uses the same function)."""
    snap = capture(pid)
    out, pos = [], 0
    for start, end in zip(snap["vma_start"].tolist(), snap["vma_end"].tolist()):
        n = (end - start) >> 12
        sl = slice(pos, pos + n)
        counts = scan_pagemap(snap["pagemap"][sl], snap["kpageflags"][sl],
                              snap["kpagecount"][sl], start >> 12)
        first = (start >> 21) << 21
        out.append({"start": start, "end": end,
                    "regions": first + (np.arange(counts.shape[0], dtype=np.int64) << 21),
                    **{name: counts[:, i] for i, name in enumerate(REGION_FIELDS)}})
        pos += n
    return out
