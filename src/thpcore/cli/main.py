"""The `thpcore` command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from thpcore import __version__
from thpcore.cli import calibrate, fidelity, thpmaps
from thpcore.lab import bench as lab_bench
from thpcore.lab import sweep as lab_sweep
from thpcore.lab import trace as lab_trace
from thpcore.lab.report import format_table, new_results_dir, write_results
from thpcore.lab.scenario import Progress, load_scenario, run_scenario
from thpcore.live.snapshot import save


def cmd_run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    t0 = time.perf_counter()
    out = Path(args.output) if args.output else new_results_dir(scenario.name)
    results = run_scenario(scenario, progress=None if args.quiet else Progress(),
                           trace_dir=out if args.trace else None)
    wall = time.perf_counter() - t0
    m = scenario.machine
    print(f"scenario {scenario.name}: {m.get('memory', '4G')} machine, seed {m.get('seed', 0)}, "
          f"{scenario.run['duration']} s simulated, {len(results)} variant(s), {wall:.1f} s wall")
    print(format_table([r.summary for r in results], scenario.run["metrics"]), end="")
    written = write_results(results, out, plots=not args.no_plots)
    if args.trace:
        written += sorted(out.glob("*.trace"))
    print(f"results in {out}/: " + ", ".join(p.name for p in written))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
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
    run.add_argument("-o", "--output", help="directory for the results (default: a new folder "
                     "under ./thpcore-results/)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--no-plots", action="store_true", help="tables only")
    run.add_argument("--trace", action="store_true", help="also write each variant's operation "
                     "stream (VARIANT.trace, for thpcore replay)")
    sw = sub.add_parser("sweep", help="run a scenario over a grid of parameters and seeds "
                        "(format: pydoc thpcore.lab.sweep); resumable")
    sw.add_argument("sweep")
    sw.add_argument("-o", "--output", help="results directory (default "
                    "./thpcore-results/sweep-NAME; an existing one is resumed)")
    sw.add_argument("-j", "--workers", type=int, help="local worker processes (default: CPUs)")
    sw.add_argument("--scheduler", help="a Dask distributed scheduler address instead")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=lambda a: lab_sweep.main(a))
    tm = sub.add_parser("thpmaps", add_help=False, help="the kernel's tools/mm/thpmaps on this "
                        "host (root): how THPs are mapped per VMA; --help for its options")
    tm.set_defaults(func=None)
    bench = sub.add_parser("bench", help="the headline speed figures on this machine")
    bench.add_argument("--json", help="also write the figures as JSON records to this file")
    bench.add_argument("--quick", action="store_true", help="skip the scenario and sweep runs")
    bench.set_defaults(func=lambda a: lab_bench.main(a.json, a.quick))
    rep = sub.add_parser("replay", help="run an operation trace (format: pydoc thpcore.lab.trace)")
    rep.add_argument("trace")
    rep.add_argument("--memory", help="machine size (overrides the trace header)")
    rep.add_argument("--seed", type=int)
    rep.set_defaults(func=lambda a: lab_trace.main(a.trace, a.memory, a.seed))
    run.set_defaults(func=cmd_run)
    cal = sub.add_parser("calibrate", help="measure the cost model on this host (no sysfs changes)")
    cal.add_argument("-o", "--output", help="write the cost profile (JSON) here; "
                     "Machine(costs=PATH) loads it")
    cal.set_defaults(func=lambda a: calibrate.main(a.output))
    snap = sub.add_parser("snapshot", help="capture a live process's anonymous memory for "
                          "Machine.from_snapshot (reads /proc; root for page frames)")
    snap.add_argument("pid", type=int)
    snap.add_argument("-o", "--output", required=True, help="the .npz file to write")
    snap.set_defaults(func=cmd_snapshot)
    fid = sub.add_parser("fidelity", help="run the fidelity suite on this kernel and in the "
                         "simulator, and compare (root; every knob and swap file is restored)")
    fid.add_argument("-k", dest="only", help="only scenarios whose name contains this text")
    fid.add_argument("--json", dest="json_path", metavar="FILE",
                     help="also write every scenario's live and simulated result as JSON")
    fid.set_defaults(func=lambda a: fidelity.main(a.only, a.json_path))
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["thpmaps"]:              # its own parser, options exactly as the script's
        return thpmaps.main(argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:
        print(f"thpcore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
