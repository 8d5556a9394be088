"""uhugepaged: hugepage collapse decided in user space and carried out with
process_madvise(MADV_COLLAPSE), on a simulated machine or on a live host.

The `uhugepaged` command: --live runs one policy (thpcore.policy) against this host's processes,
--sim compares policies on the embedded scenario (thpcore.lab.scenario_uhugepaged).
"""

from __future__ import annotations

import argparse
import signal

from thpcore.lab.scenario_uhugepaged import compare
from thpcore.policy.daemon import run
from thpcore.policy.host import LiveHost
from thpcore.policy.policies import POLICIES, load_policy


def main(argv=None) -> int:
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
    print(compare(args.sim or None, None if policy is None else [args.policy],
                  duration_s=args.duration, budget=args.budget))
    return 0
