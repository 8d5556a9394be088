"""The `thpcore` command."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from . import __version__
from .scenario import format_table, load_scenario, run_scenario

SHOWN = ["pattern", "unmovable_MiB", "free_MiB", "free_2M_blocks", "pageblocks_unmovable",
         "pageblocks_polluted", "fallbacks", "extfrag_index_9"]


def cmd_run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    t0 = time.perf_counter()
    rows = run_scenario(scenario)
    wall = time.perf_counter() - t0
    mem = scenario.machine.get("memory", "4G")
    print(f"scenario {scenario.name}: {mem} machine, seed {scenario.machine.get('seed', 0)}, "
          f"{len(rows)} variant(s), {wall:.2f} s wall")
    print(format_table(rows, SHOWN), end="")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"results written to {out / 'results.csv'}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from .snapshot import save
    snap = save(args.pid, args.output)
    n = len(snap["vma_start"])
    pages = int(((snap["pagemap"] >> 63) & 1).sum())
    print(f"pid {args.pid} ({snap['comm']}): {n} anonymous VMAs, {pages} present pages -> "
          f"{args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thpcore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"thpcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario (the embedded default when none is given)")
    run.add_argument("scenario", nargs="?", help="scenario TOML file")
    run.add_argument("-o", "--output", help="directory for results.csv")
    run.set_defaults(func=cmd_run)
    cal = sub.add_parser("calibrate", help="measure the cost model on this host (no sysfs changes)")
    cal.add_argument("-o", "--output", help="write the cost profile (JSON) here; "
                     "Machine(costs=PATH) loads it")
    cal.set_defaults(func=lambda a: __import__("thpcore.calibrate", fromlist=["main"]).main(a.output))
    snap = sub.add_parser("snapshot", help="capture a live process's anonymous memory for "
                          "Machine.from_snapshot (reads /proc; root for page frames)")
    snap.add_argument("pid", type=int)
    snap.add_argument("-o", "--output", required=True, help="the .npz file to write")
    snap.set_defaults(func=cmd_snapshot)
    fid = sub.add_parser("fidelity", help="run the fidelity suite on this kernel and in the "
                         "simulator, and compare (root; every knob and swap file is restored)")
    fid.add_argument("-k", dest="only", help="only scenarios whose name contains this text")
    fid.set_defaults(func=lambda a: __import__("thpcore.fidelity", fromlist=["main"]).main(a.only))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:
        print(f"thpcore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
