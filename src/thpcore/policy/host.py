"""The machines uhugepaged runs on: the Host protocol, SimHost (a simulated Machine) and LiveHost
(this host, through /proc and process_madvise)."""

from __future__ import annotations

import os
import time
from typing import Protocol

import numpy as np

from thpcore import live
from thpcore.constants import MADV_COLLAPSE
from thpcore.mm.mm_types import PMD_KIND_HUGE, PMD_KIND_TABLE, PMD_YOUNG
from thpcore.policy.observation import Action, ActionResult, Observation, ProcInfo, Region
from thpcore.proc.procfs import parse_buddyinfo


class Host(Protocol):
    """What uhugepaged needs from a machine, simulated or live."""

    def observe(self) -> Observation: ...

    def collapse(self, action: Action) -> ActionResult: ...

    def advance(self, seconds: float) -> None: ...


class SimHost:
    """A simulated machine. The agent is a process of its own with CAP_SYS_NICE; accessed bits
    are sampled (and cleared) each observation, like idle page tracking."""

    def __init__(self, machine, priorities: dict[int, float] | None = None, pids=None,
                 workload=None):
        self.workload = workload          # called with the seconds that pass, to touch memory
        self.m = machine
        self.priorities = priorities or {}
        self.pids = set(pids) if pids else None
        self.agent = machine.spawn(name="uhugepaged", caps={"CAP_SYS_NICE", "CAP_SYS_PTRACE"})
        self.fds: dict[int, int] = {}

    def _targets(self):
        return [p for p in self.m.processes() if p is not self.agent
                and (self.pids is None or p.pid in self.pids)]

    def observe(self) -> Observation:
        """Per-region state straight from the page tables (one engine call per process); the
        accessed bits are sampled and cleared, like idle page tracking."""
        m = self.m
        procs = []
        for p in self._targets():
            entries = list(p.mm.populated_pmds())
            if entries:
                addrs = np.array([r for r, _ in entries], dtype=np.int64)
                ents = np.array([e for _, e in entries], dtype=np.uint64)
            else:
                addrs, ents = np.zeros(0, np.int64), np.zeros(0, np.uint64)
            kinds = (ents & np.uint64(3)).astype(np.int64)
            tids = np.where(kinds == PMD_KIND_TABLE, (ents >> np.uint64(32)).astype(np.int64), -1)
            stats = m.page_tables.table_stats(tids, True)
            regions = []
            for k in range(addrs.size):
                if kinds[k] == PMD_KIND_TABLE:
                    st = stats[k]
                    regions.append(Region(p.pid, int(addrs[k]), int(st[0]), int(st[2]),
                                          int(st[1]), int(st[3]), False, int(st[4])))
                elif kinds[k] == PMD_KIND_HUGE:
                    e = int(ents[k])
                    young = bool(e & PMD_YOUNG)
                    if young:
                        p.mm.set_pmd(int(addrs[k]), e & ~PMD_YOUNG)
                    regions.append(Region(p.pid, int(addrs[k]), 512, 0, 0, 0, True,
                                          512 if young else 0))
            procs.append(ProcInfo(p.pid, p.name, self.priorities.get(p.pid, p.priority),
                                  p.memcg.path, p.mm.anon_rss * 4,
                                  sum(512 for r in regions if r.pmd_mapped) * 4, regions))
        t = m.thp.khugepaged
        return Observation(m.clock_ns, procs, m.page_alloc.free_blocks_at_least(9),
                           m.vmstat["compact_stall"],
                           {"max_ptes_none": t.max_ptes_none, "max_ptes_swap": t.max_ptes_swap,
                            "max_ptes_shared": t.max_ptes_shared})

    def collapse(self, action: Action) -> ActionResult:
        fd = self.fds.get(action.pid)
        if fd is None:
            fd = self.fds[action.pid] = self.agent.pidfd_open(action.pid)
        before = self.m.cpu_ns.get(self.agent.pid, 0)
        try:
            done = self.agent.process_madvise(fd, [(action.addr, action.length)], action.advice)
            ok, err = done == action.length, 0
        except OSError as e:
            ok, err = False, e.errno or 0
        return ActionResult(action, ok, err, self.m.cpu_ns.get(self.agent.pid, 0) - before)

    def advance(self, seconds: float) -> None:
        if self.workload is not None:
            self.workload(seconds)
        self.m.run(seconds=seconds)


class LiveHost:
    """A live host: selected pids (or a cgroup's), observed through /proc; collapses only when
    apply=True, and then only through process_madvise (the kernel's own permission checks)."""

    def __init__(self, pids=(), cgroup: str | None = None, apply: bool = False,
                 priorities: dict[int, float] | None = None):
        self.live = live
        self.pids = set(pids)
        if cgroup:
            path = f"/sys/fs/cgroup/{cgroup.strip('/')}/cgroup.procs"
            self.pids |= {int(x) for x in open(path).read().split()}
        if not self.pids:
            raise ValueError("select processes with --pid or --cgroup")
        self.apply = apply
        self.priorities = priorities or {}
        self.log: list[str] = []

    def observe(self) -> Observation:
        procs = []
        for pid in sorted(self.pids):
            try:
                stats = self.live.region_stats(pid)
                rollup = self.live.smaps_rollup(pid)
                name = open(f"/proc/{pid}/comm").read().strip()
                nice = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])
            except (FileNotFoundError, ProcessLookupError):
                continue
            regions = []
            for v in stats:
                for i, addr in enumerate(v["regions"].tolist()):
                    regions.append(Region(pid, addr, int(v["present"][i]),
                                          int(v["none"][i]) + int(v["zero"][i]),
                                          int(v["swapped"][i]), int(v["shared"][i]),
                                          bool(v["pmd_mapped"][i])))
            procs.append(ProcInfo(pid, name, self.priorities.get(pid, -nice), "",
                                  rollup.get("Rss", 0), rollup.get("AnonHugePages", 0), regions))
        t = {k: int(open(f"/sys/kernel/mm/transparent_hugepage/khugepaged/{k}").read())
             for k in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared")}
        vm = self.live.vmstat()
        buddy = parse_buddyinfo(open("/proc/buddyinfo").read())
        free_2m = sum((n[9] if len(n) > 9 else 0) + 2 * (n[10] if len(n) > 10 else 0)
                      for n in buddy.values())
        return Observation(time.monotonic_ns(), procs, free_2m, vm.get("compact_stall", 0), t)

    def collapse(self, action: Action) -> ActionResult:
        if not self.apply:
            verb = "collapse" if action.advice == MADV_COLLAPSE else f"advise {action.advice}"
            self.log.append(f"would {verb} pid {action.pid} {action.addr:#x}+{action.length:#x}")
            return ActionResult(action, False, 0, 0)
        t0 = time.perf_counter_ns()
        try:
            fd = self.live.pidfd_open(action.pid)
            try:
                done = self.live.process_madvise(fd, [(action.addr, action.length)], action.advice)
            finally:
                os.close(fd)
            ok, err = done == action.length, 0
        except OSError as e:
            ok, err = False, e.errno or 0
        return ActionResult(action, ok, err, time.perf_counter_ns() - t0)

    def advance(self, seconds: float) -> None:
        time.sleep(seconds)
