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

This module gathers the public names of thpcore.policy: the types of policy.observation, the
policies of policy.policies, the hosts of policy.host and the loop of policy.daemon. The command
itself is thpcore.cli.uhugepaged.
"""

from __future__ import annotations

from thpcore.policy.daemon import RunStats, run
from thpcore.policy.host import Host, LiveHost, SimHost
from thpcore.policy.observation import HP, Action, ActionResult, Observation, ProcInfo, Region
from thpcore.policy.policies import (POLICIES, CoveragePolicy, KhugepagedPolicy, Policy, PriorityPolicy,
                                     UtilizationPolicy, load_policy, obs_accessed_known)

__all__ = ["HP", "Region", "ProcInfo", "Observation", "Action", "ActionResult", "Host", "Policy",
           "KhugepagedPolicy", "obs_accessed_known", "PriorityPolicy", "CoveragePolicy",
           "UtilizationPolicy", "POLICIES", "load_policy", "SimHost", "LiveHost", "RunStats", "run"]
