"""What a uhugepaged policy sees and what it asks for: an Observation of processes and their
2 MiB regions, and the Actions (process_madvise advice) a host carries out."""

from __future__ import annotations

from dataclasses import dataclass, field

from thpcore.constants import MADV_COLLAPSE

HP = 2 << 20


@dataclass
class Region:
    pid: int
    addr: int
    present: int
    none: int
    swapped: int
    shared: int
    pmd_mapped: bool
    accessed: int = 0                    # pages accessed in the last window (0 if unknown)


@dataclass
class ProcInfo:
    pid: int
    name: str
    priority: float                      # higher is more important
    memcg: str
    rss_kb: int
    anon_huge_kb: int
    regions: list[Region] = field(default_factory=list)


@dataclass
class Observation:
    time_ns: int
    processes: list[ProcInfo]
    free_2m_blocks: int
    compact_stall: int
    limits: dict                         # khugepaged's max_ptes_none / swap / shared

    def candidates(self) -> list[Region]:
        """Regions that are not PMD-mapped and hold at least one page."""
        return [r for p in self.processes for r in p.regions
                if not r.pmd_mapped and r.present + r.swapped > 0]


@dataclass
class Action:
    pid: int
    addr: int
    advice: int = MADV_COLLAPSE          # or MADV_PAGEOUT / MADV_COLD / MADV_WILLNEED
    length: int = HP


@dataclass
class ActionResult:
    action: Action
    ok: bool
    errno: int
    cost_ns: int
