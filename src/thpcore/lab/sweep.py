"""`thpcore sweep`: one scenario over a grid of parameters and seeds, streamed to one table.

A sweep file (TOML)::

    scenario = "default"            # or a path to a scenario file, relative to the sweep file
    mode = "product"                # or "zip": the i-th values of every parameter together
    seeds = [0, 1, 2]
    variants = ["khugepaged", "uhugepaged-priority"]    # optional: the scenario's run.variants
    [parameters]
    "machine.memory" = ["16G", "32G"]
    "process.db.size" = ["4G", "8G"]                    # process NAME, key
    "variant.uhugepaged-priority.budget" = [2, 8]       # variant NAME, key (nested keys allowed)
    "variant.khugepaged-tuned.khugepaged.pages_to_scan" = [8192, 32768]
    "run.duration" = [600]
    "sysfs./sys/kernel/mm/transparent_hugepage/defrag" = ["madvise", "defer"]

Every job (a point of the grid x a seed x a variant) runs `scenario.run_variant` on its own
machine, so a row depends only on its inputs: the same on any executor, in any order. Rows are
appended to DIR/results.csv as they finish, keyed by `job`; a sweep started again with the same
DIR skips the jobs already there (resuming after an interruption) and refuses a different sweep.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import as_completed as done_first
from pathlib import Path
from typing import Any, Iterator

from thpcore.lab.scenario import (FRAGMENT_KEYS, MACHINE_KEYS, PROCESS_KEYS, RUN_KEYS, SUMMARY_COLUMNS,
                                  VARIANT_KEYS, Progress, Scenario, check_scenario, default_scenario_text,
                                  parse_scenario, run_variant)

SWEEP_KEYS = {"scenario", "mode", "seeds", "variants", "parameters"}


def apply_parameter(sc: Scenario, path: str, value: Any) -> None:
    """Set one dotted parameter on a scenario (in place); ValueError when it names nothing."""
    head, _, rest = path.partition(".")
    if not rest:
        raise ValueError(f"parameter {path!r}: expected TABLE.KEY")
    if head == "sysfs":
        sc.sysfs[rest] = value
        return
    if head == "sysctl":
        sc.sysctl[rest] = value
        return
    if head in ("machine", "run", "fragment"):
        if head == "fragment" and sc.fragment is None:
            sc.fragment = {}
        table = {"machine": sc.machine, "run": sc.run, "fragment": sc.fragment}[head]
        keys = rest.split(".")
        allowed = {"machine": MACHINE_KEYS, "run": RUN_KEYS, "fragment": FRAGMENT_KEYS}[head]
        if keys[0] not in allowed:
            raise ValueError(f"parameter {path!r}: {keys[0]!r} is not one of {sorted(allowed)}")
    elif head in ("process", "variant"):
        name, _, rest = rest.partition(".")
        if not rest:
            raise ValueError(f"parameter {path!r}: expected {head}.NAME.KEY")
        allowed = PROCESS_KEYS if head == "process" else VARIANT_KEYS
        if rest.split(".")[0] not in allowed:
            raise ValueError(f"parameter {path!r}: not one of {sorted(allowed)}")
        if head == "process":
            tables = [p for p in sc.processes if p.get("name") == name]
            if not tables:
                raise ValueError(f"parameter {path!r}: no process named {name!r}")
        else:
            if name not in sc.variants:
                raise ValueError(f"parameter {path!r}: no [variant.{name}]")
            tables = [sc.variants[name]]
        for table in tables:
            _set_nested(table, rest.split("."), value)
        return
    else:
        raise ValueError(f"parameter {path!r}: the table must be machine, run, fragment, "
                         "sysfs, sysctl, process.NAME or variant.NAME")
    _set_nested(table, keys, value)


def _set_nested(table: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        table = table.setdefault(k, {})
    table[keys[-1]] = value


class Sweep:
    def __init__(self, text: str, base_dir: Path = Path(".")):
        doc = tomllib.loads(text)
        unknown = set(doc) - SWEEP_KEYS
        if unknown:
            raise ValueError(f"unknown key(s) in the sweep: {sorted(unknown)}")
        ref = doc.get("scenario", "default")
        self.scenario_text = (default_scenario_text() if ref == "default"
                              else (base_dir / ref).read_text())
        base = parse_scenario(self.scenario_text)
        self.mode = doc.get("mode", "product")
        if self.mode not in ("product", "zip"):
            raise ValueError("mode must be 'product' or 'zip'")
        self.seeds = [int(s) for s in doc.get("seeds", [base.machine.get("seed", 0)])]
        self.variants = list(doc.get("variants", base.run["variants"]))
        self.parameters = dict(doc.get("parameters", {}))
        for name, values in self.parameters.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"parameter {name!r}: give a non-empty list of values")
        if self.mode == "zip" and len({len(v) for v in self.parameters.values()}) > 1:
            raise ValueError("mode = 'zip' needs lists of the same length")
        # Every point must make a valid scenario: find out now, not in the middle of the night.
        for point in self.points():
            self.scenario_for(point, self.seeds[0], self.variants[0])

    def points(self) -> list[dict[str, Any]]:
        names = list(self.parameters)
        lists = [self.parameters[n] for n in names]
        combos = itertools.product(*lists) if self.mode == "product" else zip(*lists)
        return [dict(zip(names, c)) for c in combos]

    def scenario_for(self, point: dict[str, Any], seed: int, variant: str) -> Scenario:
        return scenario_for(self.scenario_text, point, seed, variant)

    def jobs(self) -> Iterator[dict[str, Any]]:
        for point in self.points():
            for seed in self.seeds:
                for variant in self.variants:
                    spec = {"params": point, "seed": seed, "variant": variant}
                    key = json.dumps(spec, sort_keys=True)
                    spec["job"] = hashlib.sha1(key.encode()).hexdigest()[:12]
                    yield spec

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps([self.scenario_text, self.mode, self.seeds, self.variants,
                                        self.parameters], sort_keys=True).encode()).hexdigest()[:12]


def scenario_for(scenario_text: str, point: dict[str, Any], seed: int, variant: str) -> Scenario:
    """The scenario of one job: the base text with the point's parameters and the seed."""
    sc = parse_scenario(scenario_text)
    for path, value in point.items():
        apply_parameter(sc, path, value)
    sc.machine["seed"] = seed
    check_scenario(sc)
    if variant != "khugepaged" and variant not in sc.variants:
        raise ValueError(f"variant {variant!r} is not in the scenario")
    return sc


def run_job(scenario_text: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One row of the sweep table (runs in a worker process)."""
    sc = scenario_for(scenario_text, spec["params"], spec["seed"], spec["variant"])
    t0 = time.perf_counter()
    result = run_variant(sc, spec["variant"])
    row = {"job": spec["job"], **{f"param:{k}": v for k, v in spec["params"].items()}}
    row.update(result.summary)
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    return row


def run_sweep(sweep: Sweep, outdir: str | Path, workers: int | None = None,
              scheduler: str | None = None, progress=None) -> Path:
    """Run every job not yet in outdir/results.csv; returns that file."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = outdir / "sweep.id"
    if stamp.exists() and stamp.read_text().strip() != sweep.fingerprint():
        raise ValueError(f"{outdir} holds the results of a different sweep")
    stamp.write_text(sweep.fingerprint() + "\n")
    table = outdir / "results.csv"
    done = set()
    if table.exists():
        with open(table, newline="") as f:
            done = {row["job"] for row in csv.DictReader(f)}
    todo = [j for j in sweep.jobs() if j["job"] not in done]
    columns = (["job"] + [f"param:{k}" for k in sweep.parameters] + SUMMARY_COLUMNS
               + ["wall_s"])
    new_file = not table.exists() or table.stat().st_size == 0
    with open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new_file:
            writer.writeheader()
        total, n = len(todo), 0
        for row in _execute(sweep.scenario_text, todo, workers, scheduler):
            writer.writerow(row)
            f.flush()                  # a row on disk is a job never run again
            n += 1
            if progress:
                progress("sweep", n, total)
    return table


def _execute(scenario_text: str, todo: list[dict], workers: int | None,
             scheduler: str | None) -> Iterator[dict[str, Any]]:
    if not todo:
        return
    if scheduler:
        try:
            from dask.distributed import Client, as_completed
        except ImportError:
            raise ValueError("--scheduler needs Dask: pip install 'thpcore[dask]'") from None
        with Client(scheduler) as client:
            futures = [client.submit(run_job, scenario_text, j, key=f"thpcore-{j['job']}",
                                     pure=False) for j in todo]
            for fut in as_completed(futures):
                yield fut.result()
        return
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for j in todo:
            yield run_job(scenario_text, j)
        return
    ctx = multiprocessing.get_context("spawn")   # no fork of a parent holding big arrays
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(run_job, scenario_text, j) for j in todo]
        for fut in done_first(futures):
            yield fut.result()


def main(args) -> int:
    path = Path(args.sweep)
    sweep = Sweep(path.read_text(), path.parent)
    jobs = len(list(sweep.jobs()))
    outdir = Path(args.output) if args.output else Path("thpcore-results") / f"sweep-{path.stem}"
    t0 = time.perf_counter()
    table = run_sweep(sweep, outdir, args.workers, args.scheduler,
                      progress=None if args.quiet else Progress())
    print(f"sweep {path.name}: {jobs} jobs ({len(sweep.points())} points x {len(sweep.seeds)} "
          f"seeds x {len(sweep.variants)} variants), {time.perf_counter() - t0:.1f} s wall "
          f"-> {table}", file=sys.stdout)
    return 0
