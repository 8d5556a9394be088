"""Scenario files (TOML) and the runner behind `thpcore run`.

A scenario describes a machine (size, swap, seed, sysfs/sysctl settings, cgroups, unmovable
fragmentation), its processes (workload kind and parameters, priority, cgroup, count) and a run
(duration, sampling interval, variants). A variant is the scenario's own settings ("khugepaged"),
or a [variant.NAME] table that changes khugepaged knobs, sysfs, hugepage advice, or hands the
decisions to a uhugepaged policy with a collapse budget. Every variant starts from the same
seed. Unknown keys are errors, so a typo never silently runs a different experiment.
"""

from __future__ import annotations

import sys
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

import thpcore._engine as _engine
from thpcore.lab.trace import TraceWriter
from thpcore.lab.workloads import KINDS, fleet, fragment, make
from thpcore.machine import Machine
from thpcore.policy.daemon import run as run_policy
from thpcore.policy.host import SimHost
from thpcore.policy.policies import load_policy

TOP_KEYS = {"scenario", "machine", "sysfs", "sysctl", "cgroup", "fragment", "process", "fleet",
            "run", "variant"}
PROCESS_KEYS = {"name", "count", "priority", "cgroup", "workload", "size", "populate",
                "hugepage", "params"}
MACHINE_KEYS = {"memory", "swap", "seed", "kernel", "transparent_hugepage", "swap_device"}
RUN_KEYS = {"duration", "interval", "variants", "metrics"}
FRAGMENT_KEYS = {"fraction", "pattern"}
KHUGEPAGED = "/sys/kernel/mm/transparent_hugepage/khugepaged"
VARIANT_KEYS = {"khugepaged", "sysfs", "policy", "budget", "hugepage"}

# The results table: the same columns for every variant (and every sweep row).
SUMMARY_COLUMNS = [
    "variant", "seed", "top_process", "top_thp_pct", "top_thp90_s", "thp_GiB", "thp_pct",
    "bloat_MiB", "cpu_khugepaged_ms", "cpu_uhugepaged_ms", "cpu_kcompactd_ms", "fault_p50_us",
    "fault_p99_us", "fault_p999_us", "collapse_p50_us", "collapse_p99_us", "compact_stall",
    "free_2M_blocks", "tlb_walks_per_1k", "state_hash"]
# What `thpcore run` prints unless [run] metrics says otherwise.
DEFAULT_METRICS = ["variant", "top_thp_pct", "top_thp90_s", "thp_pct", "bloat_MiB",
                   "cpu_khugepaged_ms", "cpu_uhugepaged_ms", "collapse_p99_us", "compact_stall",
                   "free_2M_blocks", "tlb_walks_per_1k"]


@dataclass
class Scenario:
    name: str
    machine: dict[str, Any]
    processes: list[dict[str, Any]]
    run: dict[str, Any]
    sysfs: dict[str, Any] = field(default_factory=dict)
    sysctl: dict[str, int] = field(default_factory=dict)
    cgroups: list[dict[str, Any]] = field(default_factory=list)
    fragment: dict[str, Any] | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) in [{where}]: {sorted(unknown)}")


def parse_scenario(text: str) -> Scenario:
    doc = tomllib.loads(text)
    _check_keys(doc, TOP_KEYS, "top level")
    meta = doc.get("scenario", {})
    _check_keys(meta, {"name", "description"}, "scenario")
    machine = doc.get("machine", {})
    _check_keys(machine, MACHINE_KEYS, "machine")
    procs = list(doc.get("process", []))
    if "fleet" in doc:
        procs += fleet(doc["fleet"])
    if not procs:
        raise ValueError("a scenario needs at least one [[process]] or a [fleet]")
    for p in procs:
        _check_keys(p, PROCESS_KEYS, "process")
    run = {"duration": 600, "interval": 10, "variants": ["khugepaged"], "metrics": DEFAULT_METRICS,
           **doc.get("run", {})}
    _check_keys(run, RUN_KEYS, "run")
    variants = doc.get("variant", {})
    for name, v in variants.items():
        _check_keys(v, VARIANT_KEYS, f"variant.{name}")
    frag = doc.get("fragment")
    if frag is not None:
        _check_keys(frag, FRAGMENT_KEYS, "fragment")
    for c in doc.get("cgroup", []):
        _check_keys(c, {"path", "max", "high"}, "cgroup")
    sc = Scenario(meta.get("name", "unnamed"), machine, procs, run, doc.get("sysfs", {}),
                  doc.get("sysctl", {}), doc.get("cgroup", []), frag, variants)
    check_scenario(sc)
    return sc


def check_scenario(sc: Scenario) -> None:
    """The checks across fields (again after a sweep changed some)."""
    run = sc.run
    bad = set(run["metrics"]) - set(SUMMARY_COLUMNS)
    if bad:
        raise ValueError(f"[run] metrics: unknown {sorted(bad)}; known: {SUMMARY_COLUMNS}")
    if not 0 < run["interval"] <= run["duration"]:
        raise ValueError("[run] needs 0 < interval <= duration")
    for name in run["variants"]:
        if name != "khugepaged" and name not in sc.variants:
            raise ValueError(f"variant {name!r} has no [variant.{name}] table")
    for p in sc.processes:
        if p.get("workload", "zipf") not in KINDS:
            raise ValueError(f"process {p.get('name')!r}: workload must be one of {sorted(KINDS)}")


def default_scenario_text() -> str:
    return resources.files("thpcore").joinpath("scenarios/default.toml").read_text()


def load_scenario(path: str | Path | None = None) -> Scenario:
    if path is None:
        return parse_scenario(default_scenario_text())
    return parse_scenario(Path(path).read_text())


class Run:
    """One variant of a scenario on its own machine."""

    def __init__(self, sc: Scenario, variant: str, seed: int | None = None, trace=None):
        """trace: a text stream to write the workloads' operations to (see thpcore.lab.trace)."""
        self.sc, self.variant = sc, variant
        v = sc.variants.get(variant, {}) if variant != "khugepaged" else {}
        machine = dict(sc.machine)
        if seed is not None:
            machine["seed"] = seed
        self.m = m = Machine(**machine)
        sysfs = {**sc.sysfs, **v.get("sysfs", {})}
        sysfs.update({f"{KHUGEPAGED}/{k}": value for k, value in v.get("khugepaged", {}).items()})
        for path, value in sysfs.items():
            m.sysfs.write(path, str(value))
        for name, value in sc.sysctl.items():
            m.sysctl.set(name, value)
        for c in sc.cgroups:
            m.cgroups.create(c["path"])
            for key in ("max", "high"):
                if key in c:
                    m.sysfs.write(f"/sys/fs/cgroup/{c['path']}/memory.{key}", str(c[key]))
        self.writer = None
        if trace is not None:
            if sc.sysctl or any("max" in c or "high" in c for c in sc.cgroups):
                raise ValueError("a trace cannot carry sysctl settings or cgroup limits yet")
            self.writer = TraceWriter(trace, m, {"machine": machine, "sysfs": sysfs,
                                                 "fragment": sc.fragment,
                                                 "cgroups": [c["path"] for c in sc.cgroups]})
        if sc.fragment:
            fragment(m, sc.fragment.get("fraction", 0.0), sc.fragment.get("pattern", "scattered"))
        self.workloads = []
        for spec in sc.processes:
            for k in range(int(spec.get("count", 1))):
                name = spec.get("name", "task") + (f"{k}" if spec.get("count", 1) > 1 else "")
                cgroup = spec.get("cgroup", "")
                p = (self.writer.spawn(name, cgroup) if self.writer else
                     m.spawn(name=name, cgroup=cgroup))
                p.priority = float(spec.get("priority", 0))
                hugepage = v.get("hugepage", spec.get("hugepage", False))
                w = make(spec.get("workload", "zipf"), m, p, size=spec.get("size", "64M"),
                         populate=spec.get("populate", 1.0), hugepage=hugepage,
                         **spec.get("params", {}))
                w.setup()
                self.workloads.append(w)
        self.start_rss = {w.p.pid: w.p.mm.anon_rss for w in self.workloads}
        self.host = None
        if "policy" in v:
            self.host = SimHost(m, pids=[w.p.pid for w in self.workloads])
            self.policy = load_policy(v["policy"])
            self.budget = float(v.get("budget", 8))

    def step(self, seconds: float) -> None:
        for w in self.workloads:
            if w.p.alive:
                w.tick(seconds)
        if self.writer is not None:
            # The trace holds the workloads' operations and the passing of time; a policy's own
            # collapses are not in it (replay runs the trace under the kernel's khugepaged).
            self.writer.sleep(seconds)
        if self.host is not None:
            run_policy(self.host, self.policy, seconds, self.budget, interval_s=seconds)
        else:
            self.m.run(seconds=seconds)

    def sample_free_area(self) -> dict[str, Any]:
        """Free pages by buddy order (all migratetypes) at this instant."""
        area = self.m.page_alloc.free_area().sum(axis=0)
        row = {"variant": self.variant, "time_s": round(self.m.clock_ns / 1e9, 3)}
        row.update({f"order{o}_MiB": int(n) * (1 << o) // 256 for o, n in enumerate(area)})
        return row

    def sample(self) -> list[dict[str, Any]]:
        m = self.m
        t = m.clock_ns / 1e9
        free2m = m.page_alloc.free_blocks_at_least(9)
        rows = []
        for w in self.workloads:
            if not w.p.alive:
                continue
            rss, huge = w.p.mm.anon_rss, 512 * w.p.mm.nr_huge_pmds()
            rows.append({"variant": self.variant, "time_s": round(t, 3), "process": w.p.name,
                         "rss_MiB": rss // 256, "anon_huge_MiB": huge // 256,
                         "thp_pct": round(100 * huge / max(rss, 1), 2),
                         "free_2M_blocks": free2m})
        return rows

    def summary(self) -> dict[str, Any]:
        m = self.m
        cpu = m.cpu_ns
        agent = self.host.agent.pid if self.host is not None else None
        lat_f, lat_c = m.latency("fault"), m.latency("collapse")
        prio = max(self.workloads, key=lambda w: w.p.priority)
        rss = sum(w.p.mm.anon_rss for w in self.workloads if w.p.alive)
        huge = sum(512 * w.p.mm.nr_huge_pmds() for w in self.workloads if w.p.alive)
        w = prio
        vpns = w.access_stream(200_000)
        huge_regions = w.p.mm.huge_map(w.addr, w.regions)
        _, _, walks = _engine.tlb_simulate(vpns, huge_regions, w.addr >> 21)
        prio_rss, prio_huge = w.p.mm.anon_rss, 512 * int(huge_regions.sum())
        return {
            "variant": self.variant, "seed": m.seed,
            "top_process": w.p.name,
            "top_thp_pct": round(100 * prio_huge / max(prio_rss, 1), 2),
            "thp_GiB": round(huge * 4096 / (1 << 30), 2),
            "thp_pct": round(100 * huge / max(rss, 1), 2),
            "bloat_MiB": (rss - sum(self.start_rss.values())) // 256,
            "cpu_khugepaged_ms": round(cpu.get("khugepaged", 0) / 1e6, 1),
            "cpu_uhugepaged_ms": round(cpu.get(agent, 0) / 1e6, 1) if agent else 0.0,
            "cpu_kcompactd_ms": round(cpu.get("kcompactd", 0) / 1e6, 1),
            "fault_p50_us": round(lat_f["p50"] / 1e3, 2), "fault_p99_us": round(lat_f["p99"] / 1e3, 2),
            "fault_p999_us": round(lat_f["p99.9"] / 1e3, 2),
            "collapse_p50_us": round(lat_c["p50"] / 1e3, 1),
            "collapse_p99_us": round(lat_c["p99"] / 1e3, 1),
            "compact_stall": m.vmstat["compact_stall"],
            "free_2M_blocks": m.page_alloc.free_blocks_at_least(9),
            "tlb_walks_per_1k": round(1000 * walks / vpns.size, 1),
            "state_hash": m.state_hash(),
        }


@dataclass
class Result:
    """Everything one variant produced: the summary row, the per-process timeline, free memory
    by order over time, and the latency CDFs (kind -> (sorted ns, cumulative count))."""
    summary: dict[str, Any]
    timeline: list[dict[str, Any]]
    free_area: list[dict[str, Any]]
    cdfs: dict[str, tuple[np.ndarray, np.ndarray]]


def run_variant(sc: Scenario, variant: str, seed: int | None = None, progress=None,
                trace=None) -> Result:
    r = Run(sc, variant, seed, trace)
    timeline, free_area = r.sample(), [r.sample_free_area()]
    steps = int(sc.run["duration"] // sc.run["interval"])
    for i in range(steps):
        r.step(float(sc.run["interval"]))
        timeline += r.sample()
        free_area.append(r.sample_free_area())
        if progress:
            progress(variant, i + 1, steps)
    r.m.check()
    summary = r.summary()
    top = summary["top_process"]
    reached = [row["time_s"] for row in timeline if row["process"] == top and row["thp_pct"] >= 90]
    summary["top_thp90_s"] = reached[0] if reached else ""
    summary = {c: summary[c] for c in SUMMARY_COLUMNS}
    cdfs = {k: r.m.accounting.distribution(k) for k in ("fault", "collapse")}
    return Result(summary, timeline, free_area, cdfs)


class Progress:
    """A one-line progress bar on stderr once a run has taken more than a couple of seconds."""

    def __init__(self, stream=sys.stderr, after_s: float = 2.0):
        self.stream, self.after_s, self.t0 = stream, after_s, time.perf_counter()

    def __call__(self, variant, done, total):
        if time.perf_counter() - self.t0 < self.after_s:
            return
        if not self.stream.isatty():           # a log file gets one line per finished variant
            if done == total:
                self.stream.write(f"{variant}: {total} steps done\n")
            return
        width = 30
        fill = width * done // max(total, 1)
        self.stream.write(f"\r{variant:<24} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def run_scenario(sc: Scenario, progress=None, trace_dir=None) -> list[Result]:
    """Every variant in turn; with trace_dir, each variant's operations go to VARIANT.trace."""
    results = []
    for v in sc.run["variants"]:
        if trace_dir is None:
            results.append(run_variant(sc, v, progress=progress))
            continue
        Path(trace_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(trace_dir) / f"{v}.trace", "w") as f:
            results.append(run_variant(sc, v, progress=progress, trace=f))
    return results

