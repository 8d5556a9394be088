"""uhugepaged: hugepage collapse decided in user space and carried out with
process_madvise(MADV_COLLAPSE), on a simulated machine or on a live host.

A policy sees an Observation (per process: priority, memcg, RSS, AnonHugePages, and per 2 MiB
region: present / none / swapped / shared / PMD-mapped page counts and the pages accessed during
the last window) and returns the regions to collapse, best first; the daemon spends at most its
budget (collapses per second) on them. Write your own by subclassing Policy:

    class MyPolicy(Policy):
        name = "mine"
        def decide(self, obs):
            return [Action(r.pid, r.addr) for r in obs.candidates() if r.present > 400]

and run it with `uhugepaged --sim --policy path/to/file.py:MyPolicy`.
"""

from __future__ import annotations

import importlib.util
import signal
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

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


class Host(Protocol):
    """What uhugepaged needs from a machine, simulated or live."""

    def observe(self) -> Observation: ...

    def collapse(self, action: Action) -> ActionResult: ...

    def advance(self, seconds: float) -> None: ...


# ---- policies ---------------------------------------------------------------------------------------

class Policy:
    """observe -> decide -> act. decide() returns actions, most valuable first."""
    name = "policy"

    def decide(self, obs: Observation) -> list[Action]:
        raise TypeError(f"{type(self).__name__} must implement decide()")


class KhugepagedPolicy(Policy):
    """khugepaged's own choices: processes in registration (pid) order, regions in address
    order, max_ptes_none / max_ptes_swap / max_ptes_shared limits and the referenced rule."""
    name = "khugepaged"

    def decide(self, obs):
        lim = obs.limits
        out = []
        for p in sorted(obs.processes, key=lambda p: p.pid):
            for r in sorted(p.regions, key=lambda r: r.addr):
                if r.pmd_mapped or r.present == 0:
                    continue
                if r.none > lim["max_ptes_none"] or r.swapped > lim["max_ptes_swap"] \
                        or r.shared > lim["max_ptes_shared"]:
                    continue
                if obs_accessed_known(obs) and (r.accessed == 0 or
                                                (r.swapped and r.accessed < 256)):
                    continue
                out.append(Action(r.pid, r.addr))
        return out


def obs_accessed_known(obs: Observation) -> bool:
    return any(r.accessed for p in obs.processes for r in p.regions)


class PriorityPolicy(Policy):
    """Highest-priority processes first; within one, the fullest regions first."""
    name = "priority"

    def __init__(self, min_present: int = 1):
        self.min_present = min_present

    def decide(self, obs):
        out = []
        for p in sorted(obs.processes, key=lambda p: (-p.priority, p.pid)):
            regs = [r for r in p.regions if not r.pmd_mapped and r.present >= self.min_present]
            out += [Action(r.pid, r.addr) for r in sorted(regs, key=lambda r: (-r.present, r.addr))]
        return out


class CoveragePolicy(Policy):
    """HawkEye-style: the regions with the most pages accessed in the last window first."""
    name = "coverage"

    def decide(self, obs):
        regs = [r for r in obs.candidates() if r.accessed > 0]
        return [Action(r.pid, r.addr) for r in sorted(regs, key=lambda r: (-r.accessed, r.pid, r.addr))]


class UtilizationPolicy(Policy):
    """Ingens-style: only regions at least `threshold` populated (bounds bloat), shared fairly:
    the process with the smallest huge-page share goes next, one region at a time."""
    name = "utilization"

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def decide(self, obs):
        queues = {}
        for p in obs.processes:
            regs = [r for r in p.regions if not r.pmd_mapped and r.present >= self.threshold * 512]
            if regs:
                queues[p.pid] = sorted(regs, key=lambda r: (-r.present, r.addr))
        share = {p.pid: p.anon_huge_kb / max(p.rss_kb, 1) for p in obs.processes}
        out = []
        while queues:
            pid = min(queues, key=lambda q: (share[q], q))
            r = queues[pid].pop(0)
            out.append(Action(r.pid, r.addr))
            share[pid] += 2048 / max(next(p.rss_kb for p in obs.processes if p.pid == pid), 1)
            if not queues[pid]:
                del queues[pid]
        return out


POLICIES = {c.name: c for c in (KhugepagedPolicy, PriorityPolicy, CoveragePolicy, UtilizationPolicy)}


def load_policy(spec: str) -> Policy:
    """A built-in policy name, or path/to/file.py:ClassName for a user-defined one."""
    if spec in POLICIES:
        return POLICIES[spec]()
    if ":" in spec:
        path, cls = spec.rsplit(":", 1)
        mod_spec = importlib.util.spec_from_file_location("uhugepaged_user_policy", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"cannot load a policy from {path!r}")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        policy = getattr(module, cls)()
        if not isinstance(policy, Policy):
            raise TypeError(f"{cls} is not a uhugepaged.Policy")
        return policy
    raise ValueError(f"unknown policy {spec!r}; built in: {sorted(POLICIES)}")


# ---- hosts ------------------------------------------------------------------------------------------

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
        from thpcore.mm.mm_types import PMD_KIND_HUGE, PMD_KIND_TABLE, PMD_YOUNG
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
        from thpcore import live
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
        from thpcore.proc.procfs import parse_buddyinfo
        buddy = parse_buddyinfo(open("/proc/buddyinfo").read())
        free_2m = sum((n[9] if len(n) > 9 else 0) + 2 * (n[10] if len(n) > 10 else 0)
                      for n in buddy.values())
        return Observation(time.monotonic_ns(), procs, free_2m, vm.get("compact_stall", 0), t)

    def collapse(self, action: Action) -> ActionResult:
        if not self.apply:
            verb = "collapse" if action.advice == MADV_COLLAPSE else f"advise {action.advice}"
            self.log.append(f"would {verb} pid {action.pid} {action.addr:#x}+{action.length:#x}")
            return ActionResult(action, False, 0, 0)
        import os
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


# ---- the daemon ------------------------------------------------------------------------------------

@dataclass
class RunStats:
    ticks: int = 0
    attempted: int = 0
    collapsed: int = 0
    failed: int = 0
    cpu_ns: int = 0
    actions: list = field(default_factory=list)


def run(host, policy: Policy, duration_s: float, budget_per_s: float = 8.0,
        interval_s: float = 1.0, stop=lambda: False) -> RunStats:
    """observe -> decide -> act every interval, spending at most budget_per_s collapses/s."""
    st = RunStats()
    elapsed = 0.0
    allowance = 0.0
    while elapsed < duration_s and not stop():
        obs = host.observe()
        allowance = min(allowance + budget_per_s * interval_s, budget_per_s * interval_s)
        for action in policy.decide(obs):
            if allowance < 1:
                break
            res = host.collapse(action)
            allowance -= 1
            st.attempted += 1
            st.collapsed += res.ok
            st.failed += not res.ok and res.errno != 0
            st.cpu_ns += res.cost_ns
            st.actions.append(res)
        host.advance(interval_s)
        elapsed += interval_s
        st.ticks += 1
    return st


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="uhugepaged", description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", nargs="?", const="", metavar="SCENARIO",
                       help="run in the simulator (the embedded default scenario if none)")
    where.add_argument("--live", action="store_true", help="run against this host")
    ap.add_argument("--policy", default="priority",
                    help=f"{sorted(POLICIES)}, all (--sim only), or file.py:Class")
    ap.add_argument("--pid", type=int, action="append", default=[])
    ap.add_argument("--cgroup")
    ap.add_argument("--apply", action="store_true", help="live: really collapse (default: dry run)")
    ap.add_argument("--budget", type=float, default=8.0, help="collapses per second")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between decisions")
    args = ap.parse_args(argv)
    try:
        policy = None if args.policy == "all" else load_policy(args.policy)
    except (ValueError, TypeError, OSError) as exc:
        print(f"uhugepaged: {exc}")
        return 2
    if policy is None and args.live:
        print("uhugepaged: --live runs one policy")
        return 2
    if args.live:
        try:
            host = LiveHost(args.pid, args.cgroup, apply=args.apply)
        except (ValueError, OSError) as exc:
            print(f"uhugepaged: {exc}")
            return 2
        stopping = {"now": False}

        def handler(signum, frame):
            stopping["now"] = True
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            st = run(host, policy, args.duration, args.budget, args.interval,
                     stop=lambda: stopping["now"])
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        for line in host.log:
            print(line)
        print(f"policy {policy.name}: {st.ticks} ticks, {st.attempted} actions, "
              f"{st.collapsed} collapsed, {st.failed} failed"
              + ("" if args.apply else " (dry run: nothing was changed)"))
        return 0
    from thpcore.lab.scenario_uhugepaged import compare
    print(compare(args.sim or None, None if policy is None else [args.policy],
                  duration_s=args.duration, budget=args.budget))
    return 0
