"""Scenario files (TOML) and their runner.

A scenario names a machine and a workload; `run_scenario` runs it once per variant and returns
one row of metrics per variant. The schema grows with the simulator; unknown keys are errors,
so a typo never silently runs a different experiment.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import _engine
from .machine import Machine
from .page_alloc import MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE, fragmentation_index

PATTERNS = ("scattered", "packed", "none")


@dataclass
class Fragmenter:
    """A long-running host in miniature: movable memory (page cache, anon) fills the machine,
    reclaim frees a random part of it, the kernel's slab grows into the holes, and again."""
    fill: float = 1.0               # movable fill target, as a fraction of memory; 1.0 fills
                                    # until the allocator stops at the min watermark
    churn: float = 0.1              # fraction of movable pages reclaimed in each cycle
    cycles: int = 8
    unmovable_fraction: float = 0.01    # unmovable memory at the end, as a fraction of memory
    unmovable_order: int = 0
    patterns: list[str] = field(default_factory=lambda: list(PATTERNS))

    def __post_init__(self):
        if not 0 < self.fill <= 1:
            raise ValueError("fragmenter.fill must be in (0, 1]")
        if not 0 <= self.churn <= 1:
            raise ValueError("fragmenter.churn must be in [0, 1]")
        if not 1 <= self.cycles <= 10000:
            raise ValueError("fragmenter.cycles must be in 1..10000")
        if not 0 <= self.unmovable_fraction < 0.5:
            raise ValueError("fragmenter.unmovable_fraction must be in [0, 0.5)")
        if not 0 <= self.unmovable_order <= 10:
            raise ValueError("fragmenter.unmovable_order must be in 0..10")
        bad = [p for p in self.patterns if p not in PATTERNS]
        if bad or not self.patterns:
            raise ValueError(f"fragmenter.patterns must be drawn from {PATTERNS}, got {bad}")


@dataclass
class Scenario:
    name: str
    machine: dict[str, Any]
    fragmenter: Fragmenter
    sysfs: dict[str, str] = field(default_factory=dict)
    sysctl: dict[str, int] = field(default_factory=dict)


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) in [{where}]: {sorted(unknown)}")


def parse_scenario(text: str) -> Scenario:
    doc = tomllib.loads(text)
    _check_keys(doc, {"scenario", "machine", "fragmenter", "sysfs", "sysctl"}, "top level")
    meta = doc.get("scenario", {})
    _check_keys(meta, {"name", "description"}, "scenario")
    machine = doc.get("machine", {})
    _check_keys(machine, {"memory", "swap", "seed", "kernel", "transparent_hugepage"}, "machine")
    frag = doc.get("fragmenter", {})
    _check_keys(frag, set(Fragmenter.__dataclass_fields__), "fragmenter")
    return Scenario(name=meta.get("name", "unnamed"), machine=machine,
                    fragmenter=Fragmenter(**frag), sysfs=doc.get("sysfs", {}),
                    sysctl=doc.get("sysctl", {}))


def default_scenario_text() -> str:
    return resources.files(__package__).joinpath("scenarios/default.toml").read_text()


def load_scenario(path: str | Path | None = None) -> Scenario:
    if path is None:
        return parse_scenario(default_scenario_text())
    return parse_scenario(Path(path).read_text())


def build_machine(scenario: Scenario) -> Machine:
    m = Machine(**scenario.machine)
    for path, value in scenario.sysfs.items():
        m.sysfs.write(path, str(value))
    for name, value in scenario.sysctl.items():
        m.sysctl.set(name, value)
    return m


def run_fragmenter(m: Machine, frag: Fragmenter, pattern: str) -> dict[str, Any]:
    """Run the fill/reclaim/slab-growth cycles, free the movable memory, and measure what is
    left for THP. 'packed' allocates all unmovable memory before the first cycle, 'scattered'
    spreads it over the cycles, 'none' has none."""
    u_order = frag.unmovable_order
    n_unmovable = 0 if pattern == "none" else int(m.nr_pages * frag.unmovable_fraction) >> u_order
    target = int(m.nr_pages * frag.fill)
    unmovable: list[np.ndarray] = []
    movable = np.empty(0, np.uint32)
    if pattern == "packed":
        unmovable.append(m.kernel_alloc_bulk(u_order, "unmovable", n_unmovable))
    for cycle in range(frag.cycles):
        in_use = m.nr_pages - int(m.page_alloc.zone.nr_free_pages)
        got = m.kernel_alloc_bulk(0, "movable", max(0, target - in_use))
        movable = np.concatenate([movable, got])
        reclaim = m.rng.random(movable.size) < frag.churn
        m.kernel_free_bulk(movable[reclaim], 0)
        movable = movable[~reclaim]
        if pattern == "scattered":
            share = n_unmovable * (cycle + 1) // frag.cycles - n_unmovable * cycle // frag.cycles
            unmovable.append(m.kernel_alloc_bulk(u_order, "unmovable", share))
    m.kernel_free_bulk(m.rng.permutation(movable), 0)
    m.check()
    unm = np.concatenate(unmovable) if unmovable else np.empty(0, np.uint32)

    zone = m.page_alloc.zone
    frames = zone.frames()
    pinned = (frames["flags"] & _engine.PY_PG_KERNEL) != 0
    pinned &= (frames["flags"] & _engine.PY_PG_MOVABLE_OPS) == 0
    polluted = int(pinned.reshape(-1, 512).any(axis=1).sum())
    blocks = zone.pageblock_counts()
    area = zone.free_area()
    return {
        "pattern": pattern,
        "unmovable_MiB": round(len(unm) * (4 << u_order) / 1024, 1),
        "free_MiB": round(int(zone.nr_free_pages) * 4 / 1024, 1),
        "free_2M_blocks": m.page_alloc.free_blocks_at_least(9),
        "pageblocks_unmovable": int(blocks[MIGRATE_UNMOVABLE]),
        "pageblocks_reclaimable": int(blocks[MIGRATE_RECLAIMABLE]),
        "pageblocks_movable": int(blocks[MIGRATE_MOVABLE]),
        "pageblocks_polluted": polluted,
        "fallbacks": int(zone.alloc_fallbacks),
        "extfrag_index_9": fragmentation_index(area, 9),
    }


def run_scenario(scenario: Scenario) -> list[dict[str, Any]]:
    rows = []
    for pattern in scenario.fragmenter.patterns:
        m = build_machine(scenario)
        row = run_fragmenter(m, scenario.fragmenter, pattern)
        row["state_hash"] = m.state_hash()
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no results)\n"
    columns = columns or list(rows[0])
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out) + "\n"
