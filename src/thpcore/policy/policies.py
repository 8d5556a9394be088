"""uhugepaged's policies: the Policy base class, the built-in ones and load_policy (a built-in
name or path/to/file.py:ClassName)."""

from __future__ import annotations

import importlib.util

from thpcore.policy.observation import Action, Observation


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
