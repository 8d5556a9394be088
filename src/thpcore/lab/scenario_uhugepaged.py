"""The default uhugepaged comparison: which policy spends a collapse budget best?

A 4 GiB host runs a high-priority database (1 GiB mapped, 3/4 of each 2 MiB region written),
a batch job (1 GiB, fully written) and eight small services (32 MiB each, 30% written), all on
4 KiB pages. Each policy gets the same machine (same seed) and the same budget; the kernel's own
khugepaged is shown with default and tuned settings for reference.
"""

from __future__ import annotations

import numpy as np

import thpcore._engine as _engine
from thpcore.constants import MADV_HUGEPAGE
from thpcore.lab.report import format_table
from thpcore.machine import Machine
from thpcore.mm.mm_types import PMD_KIND_HUGE, pmd_kind
from thpcore.policy.daemon import run
from thpcore.policy.host import SimHost
from thpcore.policy.policies import POLICIES, load_policy

MB = 1 << 20
HP = 2 << 20


def build(seed: int = 0):
    m = Machine("4G", seed=seed)
    db = m.spawn(name="db")
    db.priority = 10.0
    a = db.mmap(1024 * MB)
    for i in range(512):                                   # 3/4 of every region
        db.write(a + i * HP, 384 * 4096)
    batch = m.spawn(name="batch")
    batch.priority = 1.0
    b = batch.mmap(1024 * MB)
    batch.write(b, 1024 * MB)
    services = []
    for k in range(8):
        s = m.spawn(name=f"svc{k}")
        s.priority = 0.0
        c = s.mmap(32 * MB)
        for i in range(16):
            s.write(c + i * HP, 154 * 4096)
        services.append((s, c))
    def workload(seconds):
        # Every second the database touches its hot quarter and one service wakes up.
        db.read(a, 256 * MB)
        s, c = services[int(m.clock_ns // 1_000_000_000) % len(services)]
        s.read(c, 32 * MB)
    return m, (db, a), (batch, b), services, workload


def tlb_walks_per_kilo(m: Machine, proc, addr: int, size: int, n: int = 200_000) -> float:
    """Page walks per 1000 uniformly random accesses to the process's written pages."""
    rng = np.random.default_rng(m.seed)
    regions = size // HP
    pages = rng.integers(0, 384, n) + rng.integers(0, regions, n) * 512
    vpns = (addr >> 12) + pages.astype(np.int64)
    huge = np.array([pmd_kind(proc.mm.get_pmd(addr + i * HP)) == PMD_KIND_HUGE
                     for i in range(regions)], dtype=np.uint8)
    _, _, walks = _engine.tlb_simulate(vpns, huge, addr >> 21)
    return 1000.0 * walks / n


def _row(m, name, db, a, rss_before, cpu_ns):
    rr = db.smaps_rollup()
    total_thp = sum(p.smaps_rollup()["AnonHugePages"] for p in m.processes()) // 1024
    rss_after = sum(p.smaps_rollup()["Rss"] for p in m.processes())
    return {"policy": name,
            "db_thp_%": round(100 * rr["AnonHugePages"] / max(rr["Rss"], 1), 1),
            "thp_MiB": total_thp,
            "bloat_MiB": (rss_after - rss_before) // 1024,
            "collapse_cpu_ms": round(cpu_ns / 1e6, 1),
            "compact_stall": m.vmstat["compact_stall"],
            "db_walks_per_1k": round(tlb_walks_per_kilo(m, db, a, 1024 * MB), 1)}


def compare(scenario: str | None = None, policies=None, duration_s: float = 60.0,
            budget: float = 8.0, seed: int = 0) -> str:
    if scenario:
        raise ValueError("uhugepaged --sim takes the embedded scenario only for now")
    rows = []
    for name in policies or sorted(POLICIES):
        m, (db, a), _, _, workload = build(seed)
        rss = sum(p.smaps_rollup()["Rss"] for p in m.processes())
        host = SimHost(m, workload=workload)
        st = run(host, load_policy(name), duration_s, budget)
        rows.append(_row(m, f"uhugepaged:{name}", db, a, rss, st.cpu_ns))
    for label, tune in (("khugepaged default", {}),
                        ("khugepaged tuned", {"pages_to_scan": 32768, "scan_sleep_millisecs": 1000})):
        m, (db, a), (batch, b), services, workload = build(seed)
        rss = sum(p.smaps_rollup()["Rss"] for p in m.processes())
        for k, v in tune.items():
            setattr(m.thp.khugepaged, k, v)
        for p, addr, size in [(db, a, 1024 * MB), (batch, b, 1024 * MB)] + \
                [(s, c, 32 * MB) for s, c in services]:
            p.madvise(addr, size, MADV_HUGEPAGE)
        for _ in range(int(duration_s)):
            workload(1.0)
            m.run(seconds=1.0)
        rows.append(_row(m, label, db, a, rss, m.cpu_ns.get("khugepaged", 0)))
    return format_table(rows)
