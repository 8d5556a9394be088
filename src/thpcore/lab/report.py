"""Results of a run: the text table the commands print, and on disk tidy tables (CSV, and Parquet
when pyarrow is installed) and PNG plots (when matplotlib is installed: the `plot` extra)."""

from __future__ import annotations

import csv
import datetime
from pathlib import Path
from typing import Any, Iterable

TABLES = ("results", "timeline", "free_area")


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no results)\n"
    columns = columns or list(rows[0])
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out) + "\n"


def new_results_dir(name: str, root: str | Path = "thpcore-results") -> Path:
    """A fresh folder under `root` named for the scenario and the time, never an existing one."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def write_table(path: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """rows -> path.csv (and path.parquet with pyarrow); returns the files written."""
    if not rows:
        return []
    out = [path.with_suffix(".csv")]
    with open(out[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return out
    table = pa.Table.from_pylist([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    pq.write_table(table, path.with_suffix(".parquet"))
    return out + [path.with_suffix(".parquet")]


def write_results(results: Iterable, outdir: str | Path, plots: bool = True) -> list[Path]:
    """Write a scenario's results (a list of scenario.Result) into outdir."""
    results = list(results)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = write_table(outdir / "results", [r.summary for r in results])
    written += write_table(outdir / "timeline", [row for r in results for row in r.timeline])
    written += write_table(outdir / "free_area", [row for r in results for row in r.free_area])
    if plots:
        written += write_plots(results, outdir)
    return written


def write_plots(results: list, outdir: Path) -> list[Path]:
    """thp_coverage.png, free_area.png, latency_cdf.png; nothing without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], results):
        # Tasks started with count = N (svc0, svc1, ...) are one line: their summed coverage.
        by: dict[str, dict[float, list[int]]] = {}
        for row in r.timeline:
            name = row["process"].rstrip("0123456789") or row["process"]
            acc = by.setdefault(name, {}).setdefault(row["time_s"], [0, 0])
            acc[0] += row["anon_huge_MiB"]
            acc[1] += row["rss_MiB"]
        for name, series in by.items():
            times = sorted(series)
            ax.plot([t / 60 for t in times],
                    [100 * series[t][0] / max(series[t][1], 1) for t in times], label=name)
        ax.set_title(r.summary["variant"])
        ax.set_xlabel("time (min)")
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel("AnonHugePages / Rss (%)")
    written.append(_save(plt, fig, outdir / "thp_coverage.png"))

    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], results):
        times = [row["time_s"] / 60 for row in r.free_area]
        orders = [k for k in r.free_area[0] if k.startswith("order")]
        colors = plt.cm.viridis([i / max(len(orders) - 1, 1) for i in range(len(orders))])
        ax.stackplot(times, [[row[k] for row in r.free_area] for k in orders],
                     labels=[k.replace("_MiB", "") for k in orders], colors=colors)
        ax.set_title(r.summary["variant"])
        ax.set_xlabel("time (min)")
    axes[0][0].set_ylabel("free memory (MiB)")
    axes[0][-1].legend(fontsize="x-small", loc="upper right")
    written.append(_save(plt, fig, outdir / "free_area.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for ax, kind in zip(axes[0], ("fault", "collapse")):
        for r in results:
            values, cum = r.cdfs[kind]
            if values.size:
                ax.step(values / 1e3, cum / cum[-1], where="post", label=r.summary["variant"])
        ax.set_xscale("log")
        ax.set_xlabel(f"{kind} latency (us)")
        ax.set_ylabel("fraction")
        ax.legend(fontsize="small")
    written.append(_save(plt, fig, outdir / "latency_cdf.png"))
    return written


def _save(plt, fig, path: Path) -> Path:
    """One figure of write_plots to path (laid out, 100 dpi), then closed."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
