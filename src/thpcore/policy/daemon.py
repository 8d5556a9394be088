"""The uhugepaged loop: observe -> decide -> act on a host, within a collapse budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from thpcore.policy.policies import Policy


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
