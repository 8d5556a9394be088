"""uhugepaged: policies over the Host protocol, the TLB model, the command."""

import os

import numpy as np
import pytest

import thpcore
from thpcore import MADV_HUGEPAGE
from thpcore._engine import tlb_simulate
from thpcore.cli.uhugepaged import main
from thpcore.policy.uhugepaged import (CoveragePolicy, KhugepagedPolicy, PriorityPolicy, SimHost, UtilizationPolicy,
                                load_policy, run)

MB, HP = 1 << 20, 2 << 20


def machine_with(procs):
    """procs: [(name, priority, [(regions, pages written per region)])]."""
    m = thpcore.Machine("2G", seed=0)
    out = []
    for name, prio, layout in procs:
        p = m.spawn(name=name)
        p.priority = prio
        for nregions, pages in layout:
            a = p.mmap(nregions * HP)
            for i in range(nregions):
                p.write(a + i * HP, pages * 4096)
            out.append((p, a, nregions))
    return m, out


def thp_regions(p):
    return p.smaps_rollup()["AnonHugePages"] // 2048


def test_priority_policy_serves_the_most_important_process_first():
    m, regs = machine_with([("low", 1, [(8, 512)]), ("high", 10, [(8, 300)])])
    host = SimHost(m)
    st = run(host, PriorityPolicy(), duration_s=1, budget_per_s=8)
    low, high = regs[0][0], regs[1][0]
    assert thp_regions(high) == 8 and thp_regions(low) == 0
    assert st.collapsed == 8 and st.cpu_ns > 0
    assert m.cpu_ns[host.agent.pid] == st.cpu_ns          # the agent pays for the collapses
    m.check()


def test_utilization_policy_bounds_bloat_and_shares_fairly():
    m, regs = machine_with([("a", 0, [(4, 500), (4, 100)]), ("b", 0, [(4, 480)])])
    before = sum(p.smaps_rollup()["Rss"] for p in m.processes())
    run(SimHost(m), UtilizationPolicy(0.9), duration_s=1, budget_per_s=4)
    a, b = regs[0][0], regs[2][0]
    assert thp_regions(a) == 2 and thp_regions(b) == 2       # alternating between processes
    bloat = sum(p.smaps_rollup()["Rss"] for p in m.processes() if p.name in "ab") - before
    assert bloat <= 4 * (512 - 460) * 4                      # only >= 90% full regions
    m.check()


def test_coverage_policy_follows_the_accessed_pages():
    m, regs = machine_with([("p", 0, [(8, 512)])])
    p, a, _ = regs[0]
    host = SimHost(m)
    host.observe()                                           # clears the fault-time accessed bits
    p.read(a + 5 * HP, HP)
    p.read(a + 2 * HP, HP // 2)
    actions = CoveragePolicy().decide(host.observe())
    assert [x.addr for x in actions] == [a + 5 * HP, a + 2 * HP]


def test_khugepaged_policy_collapses_what_khugepaged_collapses():
    def scene():
        m = thpcore.Machine("1G", seed=0)
        m.thp.khugepaged.max_ptes_none = 256
        p = m.spawn()
        a = p.mmap(16 * HP)
        for i in range(16):
            p.write(a + i * HP, (60 + i * 30) * 4096)          # 60 .. 510 pages written
        return m, p, a

    m1, p1, a1 = scene()
    p1.madvise(a1, 16 * HP, MADV_HUGEPAGE)
    m1.khugepaged.wait_full_scans(2)
    kernel_regions = sorted(int(r) for r in m1.collapse_events()["address"]
                            [m1.collapse_events()["result"] == 1])

    m2, p2, a2 = scene()
    run(SimHost(m2), KhugepagedPolicy(), duration_s=1, budget_per_s=100)
    user_regions = sorted(e["start"] + i * HP for e in p2.smaps()
                          for i in range((e["end"] - e["start"]) // HP) if e["AnonHugePages"])
    assert kernel_regions == [a1 + i * HP for i in range(16) if 60 + i * 30 >= 256]
    assert [r - a2 for r in sorted(user_regions)] == [r - a1 for r in kernel_regions] or \
        thp_regions(p2) == len(kernel_regions)
    assert thp_regions(p2) == thp_regions(p1)


def test_user_defined_policy_from_a_file(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("from thpcore.policy.uhugepaged import Policy, Action\n"
                 "class Biggest(Policy):\n"
                 "    name = 'biggest'\n"
                 "    def decide(self, obs):\n"
                 "        regs = sorted(obs.candidates(), key=lambda r: -r.present)\n"
                 "        return [Action(r.pid, r.addr) for r in regs[:1]]\n")
    policy = load_policy(f"{f}:Biggest")
    m, regs = machine_with([("p", 0, [(2, 100), (1, 400)])])
    run(SimHost(m), policy, duration_s=1, budget_per_s=8)
    p, big, _ = regs[1]
    assert thp_regions(p) == 1
    assert [e["AnonHugePages"] for e in p.smaps() if e["start"] == big] == [2048]
    with pytest.raises(ValueError):
        load_policy("nonsense")


def test_tlb_model():
    rng = np.random.default_rng(0)
    vpns = rng.integers(0, 1 << 18, 100_000).astype(np.int64)      # 1 GiB, random
    l1, stlb, walks = tlb_simulate(vpns, np.zeros(512, np.uint8), 0)
    assert l1 + stlb + walks == 100_000 and walks > 95_000
    l1, stlb, walks = tlb_simulate(vpns, np.ones(512, np.uint8), 0)
    assert walks == 512                                               # one cold miss per region
    seq = np.repeat(np.arange(64, dtype=np.int64), 10)
    l1, stlb, walks = tlb_simulate(seq, np.zeros(1, np.uint8), 0)
    assert walks == 64 and l1 == 640 - 64
    with pytest.raises(ValueError):
        tlb_simulate(np.array([-1]), np.zeros(1, np.uint8), 0)


def test_command_sim_and_errors(capsys):
    assert main(["--sim", "--policy", "priority", "--duration", "2"]) == 0
    out = capsys.readouterr().out
    assert "uhugepaged:priority" in out and "khugepaged default" in out
    assert main(["--sim", "--policy", "bogus"]) == 2
    assert main(["--live", "--policy", "priority"]) == 2     # no processes selected


def test_live_dry_run_changes_nothing(capsys):
    lh = pytest.importorskip("live_harness")
    if os.geteuid() != 0 or not os.access("/proc/kpageflags", os.R_OK):
        pytest.skip("needs root")

    def target(chan):
        r = lh.Region.aligned(4 * HP)
        r.write(0, 4 * HP, value=1)
        chan.send(r.addr)
        chan.recv()
        return r.smaps(partial="include")["AnonHugePages"]

    with lh.thp_settings(enabled="never"):
        with lh.ForkedChild(target) as child:
            child.recv()
            rc = main(["--live", "--pid", str(child.pid), "--policy", "priority",
                       "--duration", "1", "--interval", "1"])
            child.send("done")
            ahp = child.join()
    out = capsys.readouterr().out
    assert rc == 0 and "would collapse" in out and "dry run" in out
    assert ahp == 0
