"""Machine.check() and Machine.state_hash(): the invariants no kernel state can break, and a
digest of the whole simulated state (equal seeds and operations give equal digests)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

import thpcore._engine as _engine
from thpcore.errors import InvariantError
from thpcore.mm.mm_types import (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, pmd_huge_pfn, pmd_kind, pmd_table_id,
                                 pte_present, pte_swap)

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel


def check(kernel: "Kernel") -> None:
    """Prove the invariants; raises InvariantError naming the first violation."""
    zone = kernel.page_alloc.zone
    rc = zone.check()
    if rc:
        where = f" at pfn {zone.check_pfn}" if zone.check_pfn >= 0 else ""
        raise InvariantError(f"{_engine.CHECK_MESSAGES[rc]}{where} (code {rc})")
    tables, heads, pmd_counts = [], [], {}
    for p in kernel._processes.values():
        mm = p.mm
        rss = swap = 0
        for region, entry in mm.populated_pmds():
            if not p.alive:
                raise InvariantError(f"exited pid {p.pid} still has page tables")
            tables.append(pmd_table_id(entry))
            kind = pmd_kind(entry)
            if kind == PMD_KIND_HUGE:
                head = pmd_huge_pfn(entry)
                heads.append(head)
                pmd_counts[head] = pmd_counts.get(head, 0) + 1
                rss += 512
                if mm.vmas.find(region) is None or mm.vmas.find(region).end < region + (2 << 20):
                    raise InvariantError(f"pid {p.pid}: huge PMD at {region:#x} outside one VMA")
            elif kind != PMD_KIND_HUGE_ZERO:
                t = kernel.page_tables.table(pmd_table_id(entry))
                rss += int(pte_present(t).sum())
                swap += int(pte_swap(t).sum())
        if p.alive and (rss != mm.anon_rss or swap != mm.swap_ents):
            raise InvariantError(f"pid {p.pid}: rss {mm.anon_rss}/swap {mm.swap_ents} counted, "
                                 f"{rss}/{swap} mapped")
    err = kernel.page_tables.check_against(tables, heads)
    if err:
        raise InvariantError(err)
    f = zone.frames()
    user = (f["flags"] & _engine.PY_PG_LRU) != 0
    charged = np.bincount(f["memcg"][user], minlength=1 << 16)
    usage = zone.memcg_usage()
    if not np.array_equal(charged, usage):
        cid = int(np.nonzero(charged != usage)[0][0])
        raise InvariantError(f"memcg {cid}: {usage[cid]} pages charged, {charged[cid]} held")
    if pmd_counts != kernel.thp_pmd_mappings:
        raise InvariantError("PMD-mapped THP bookkeeping disagrees with the page tables")
    # A lazyfree mark on a mapped frame belongs to an anonymous (LRU) page.
    bits = zone.lazyfree_bits()
    nz = np.flatnonzero(bits)
    on = np.unpackbits(bits[nz][:, None], axis=1, bitorder="little").astype(bool)
    pfns = ((nz[:, None] << 3) + np.arange(8))[on]
    fl = f["flags"][pfns]
    allocated = (fl & (_engine.PY_PG_HEAD | _engine.PY_PG_TAIL)) != 0   # mapcount is a link
    bad = pfns[allocated & (f["mapcount"][pfns] > 0) & ((fl & _engine.PY_PG_LRU) == 0)]
    if bad.size:
        raise InvariantError(f"lazyfree mark on mapped non-LRU frame {int(bad[0])}")

def state_hash(kernel: "Kernel") -> str:
    """A digest of the whole simulated state; equal seeds and operations give equal hashes."""
    h = hashlib.blake2b(digest_size=16)
    zone = kernel.page_alloc.zone
    for name, arr in sorted(zone.frames().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(zone.free_area().tobytes())
    h.update(np.ascontiguousarray(zone.lazyfree_bits()).tobytes())
    for mt in range(5):
        h.update(np.asarray(zone.free_list(mt, 0)[:64], dtype=np.int64).tobytes())
    procs = []
    for p in kernel._processes.values():
        mm = p.mm
        procs.append([p.pid, p.name, p.uid, sorted(p.caps), p.alive, p.exit_reason,
                      [(v.start, v.end, v.flags, v.anon_vma) for v in mm.vmas],
                      mm.anon_rss, mm.swap_ents, mm.registered, mm.thp_disable])
        for region, entry in mm.populated_pmds():
            h.update(np.array([region, entry], dtype=np.uint64).tobytes())
            if pmd_kind(entry) not in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
                h.update(kernel.page_tables.table(pmd_table_id(entry)).tobytes())
    meta = {
        "processes": procs,
        "deferred_split": list(kernel.deferred_split.items()),
        "mthp_regions": sorted(kernel.mthp_regions.items()),
        "mthp_stats": {o: sorted(g.stats.items()) for o, g in kernel.thp.sizes.items()},
        "khugepaged_mms": [
            next(p.pid for p in kernel._processes.values() if p.mm is mm)
            for mm in kernel.khugepaged_mm_list],
        "huge_zero": kernel.huge_zero_pfn,
        "write_generation": kernel._write_generation,
        "swap_used": kernel.page_tables.swap_used,
        "counters": zone.counters(),
        "events": kernel.events,
        "watermarks": zone.watermarks(),
        "min_free_kbytes": kernel.page_alloc.min_free_kbytes,
        "sysfs": {p: kernel.sysfs.read(p) for p in sorted(kernel.sysfs._files)},
        "clock_ns": kernel.clock_ns,
        "rng": kernel.rng.bit_generator.state,
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()
