"""The cost model: what each simulated action costs in CPU time, who pays, and the latency
distributions that follow (`m.cpu_ns`, `m.latency(kind)`).

Actions are charged to an actor: a pid (the task that faulted, or the caller of madvise /
process_madvise), or "khugepaged", "kcompactd", "kswapd". Charging does not move the machine's
clock: tasks and kernel threads run concurrently; the clock moves with `Machine.run()`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass(frozen=True)
class CostModel:
    """Unit costs in nanoseconds. Defaults: `thpcore calibrate` (fastest of 5 runs) on the
    development host (Linux 6.18, 2 vCPU VM) for the measured fields; the ones marked estimate
    are not measured yet. `Machine(costs=path_or_CostModel)` loads another profile."""
    fault_4k_ns: int = 1_890          # anonymous write fault: allocate, zero, map one 4 KiB page
    fault_thp_ns: int = 180_000       # THP write fault: allocate, zero 2 MiB, map the PMD
    fault_zero_page_ns: int = 790     # read fault mapping the zero page (also a minor fault)
    zero_4k_ns: int = 75              # clearing one page
    copy_4k_ns: int = 350             # copying one page (COW, collapse, migration)
    pte_scan_ns: int = 2              # examining one PTE in a collapse scan (estimate)
    collapse_2m_ns: int = 500_000     # MADV_COLLAPSE of a 4 KiB-mapped 2 MiB region, all included
    tlb_flush_ns: int = 1_500         # a TLB shootdown after unmapping or collapse (estimate)
    split_pmd_ns: int = 3_000         # splitting a PMD mapping into 512 PTEs (estimate)
    swap_out_4k_ns: int = 6_000       # writing one page to swap (estimate)
    swap_in_4k_ns: int = 12_000       # reading one page from swap, synchronously (estimate)
    migrate_4k_ns: int = 900          # compaction: unmap, copy, remap one page (estimate)

    @classmethod
    def load(cls, source) -> "CostModel":
        if source is None:
            return cls()
        if isinstance(source, CostModel):
            return source
        if isinstance(source, dict):
            data = source
        else:
            with open(source) as f:
                data = json.load(f)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown cost fields: {sorted(unknown)}")
        bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad:
            raise ValueError(f"costs must be non-negative integers (ns): {bad}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


class Accounting:
    """CPU time per actor and latency samples per kind (weighted, so bulk faults are cheap)."""

    KINDS = ("fault", "collapse", "compact_stall", "swap_in")

    def __init__(self):
        self.cpu_ns: dict = {}
        # kind -> {latency ns: count}: bounded by the distinct latencies, not the actions.
        self._samples: dict[str, dict[int, int]] = {k: {} for k in self.KINDS}

    def charge(self, actor, ns: int, kind: str | None = None, count: int = 1) -> None:
        """Charge `count` actions of `ns` each to `actor`, recording them as latency samples."""
        if count <= 0:
            return
        self.cpu_ns[actor] = self.cpu_ns.get(actor, 0) + ns * count
        if kind is not None:
            hist = self._samples[kind]
            hist[ns] = hist.get(ns, 0) + count

    def distribution(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Sorted latencies (ns) of `kind` and the cumulative count up to each: the CDF."""
        if kind not in self._samples:
            raise ValueError(f"latency kind must be one of {self.KINDS}")
        samples = self._samples[kind]
        values = np.fromiter(samples.keys(), dtype=np.float64, count=len(samples))
        counts = np.fromiter(samples.values(), dtype=np.int64, count=len(samples))
        order = np.argsort(values, kind="stable")
        return values[order], np.cumsum(counts[order])

    def latency(self, kind: str) -> dict[str, float]:
        """count, mean, p50, p99 and p99.9 in ns (weighted nearest-rank percentiles)."""
        values, cum = self.distribution(kind)
        if not values.size:
            return {"count": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "p99.9": 0.0}
        counts = np.diff(cum, prepend=0)
        total = int(cum[-1])

        def pct(q: float) -> float:
            rank = max(int(np.ceil(q * total)), 1)
            return float(values[np.searchsorted(cum, rank)])

        return {"count": total, "mean": float((values * counts).sum() / total),
                "p50": pct(0.50), "p99": pct(0.99), "p99.9": pct(0.999)}
