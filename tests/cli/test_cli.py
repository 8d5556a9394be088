import csv
import subprocess
import sys

import numpy as np
import pytest

from thpcore import Machine
from thpcore.cli.main import main
from thpcore.lab.scenario import (SUMMARY_COLUMNS, load_scenario, parse_scenario, run_scenario,
                              run_variant)
from thpcore.lab.workloads import KINDS, fragment, make
from cases import SMALL



def test_default_scenario_is_the_issue_question():
    sc = load_scenario()
    assert sc.machine["memory"] == "64G"
    assert sc.run["duration"] == 3600
    assert sc.run["variants"] == ["khugepaged", "khugepaged-tuned", "uhugepaged-priority"]
    names = {p["name"] for p in sc.processes}
    assert names == {"db", "batch", "svc"}
    assert sc.fragment["pattern"] == "scattered"


def test_small_scenario_compares_policies(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(SMALL)
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "scenario small: 1G machine, seed 3" in out
    rows = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert list(rows) == ["khugepaged", "tuned", "uhugepaged"]
    assert list(next(iter(rows.values()))) == SUMMARY_COLUMNS
    # Default khugepaged (4096 pages every 10 s) has not reached the database after 2 minutes
    # of scanning the services first; tuned khugepaged and the priority daemon have.
    assert float(rows["khugepaged"]["top_thp_pct"]) < 50
    assert float(rows["tuned"]["top_thp_pct"]) == 100
    assert float(rows["uhugepaged"]["top_thp_pct"]) == 100
    assert float(rows["uhugepaged"]["cpu_khugepaged_ms"]) == 0
    assert float(rows["uhugepaged"]["cpu_uhugepaged_ms"]) > 0
    # collapsing 3/4-populated regions costs memory
    assert int(rows["tuned"]["bloat_MiB"]) > 0
    timeline = list(csv.DictReader(open(tmp_path / "out" / "timeline.csv")))
    assert {r["process"] for r in timeline} == {"svc0", "svc1", "svc2", "db"}
    assert len(timeline) == 3 * 4 * (120 // 20 + 1)
    free = list(csv.DictReader(open(tmp_path / "out" / "free_area.csv")))
    assert len(free) == 3 * 7 and "order9_MiB" in free[0]


def test_plots_written_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    from thpcore.lab.report import write_results
    sc = parse_scenario(SMALL)
    sc.run["duration"], sc.run["variants"] = 40, ["khugepaged"]
    written = write_results(run_scenario(sc), tmp_path)
    names = {p.name for p in written}
    assert {"thp_coverage.png", "free_area.png", "latency_cdf.png"} <= names
    assert (tmp_path / "thp_coverage.png").read_bytes()[:4] == b"\x89PNG"


def test_default_output_dir_is_new(tmp_path, monkeypatch):
    from thpcore.lab.report import new_results_dir
    monkeypatch.chdir(tmp_path)
    a = new_results_dir("x")
    a.mkdir(parents=True)
    b = new_results_dir("x")
    assert a != b and a.parent.name == "thpcore-results" and not b.exists()


def test_scenario_is_deterministic():
    sc = parse_scenario(SMALL)
    a, b = run_variant(sc, "tuned"), run_variant(sc, "tuned")
    assert a.summary == b.summary and a.timeline == b.timeline
    c = run_variant(sc, "tuned", seed=4)
    assert c.summary["state_hash"] != a.summary["state_hash"]


def test_scenario_errors(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[machine]\nmemroy = "128M"\n[[process]]\nname = "a"\n')
    assert main(["run", str(path)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.parametrize("bad", [
    '[bogus]\n',
    '[machine]\nmemory = "1G"\n',                                        # no process
    '[[process]]\nworkload = "nope"\n',
    '[[process]]\nsize = "1M"\n[run]\ninterval = 0\n',
    '[[process]]\n[run]\nvariants = ["missing"]\n',
    '[[process]]\n[run]\nmetrics = ["nope"]\n',
    '[[process]]\n[variant.x]\nbogus = 1\n',
    '[[process]]\n[fragment]\nfill = 0.1\n',
])
def test_scenario_validation(bad):
    with pytest.raises(ValueError):
        parse_scenario(bad)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_workloads_run_and_stream(kind):
    m = Machine(memory="256M", seed=1)
    p = m.spawn(name=kind)
    w = make(kind, m, p, size="8M", populate=0.5)
    w.setup()
    assert p.mm.anon_rss == 4 * 256              # half of each 2 MiB region
    for _ in range(3):
        w.tick(10.0)
    m.check()
    s = w.access_stream(1000)
    assert s.dtype == np.int64 and s.size == 1000
    assert s.min() >= w.addr >> 12 and s.max() < (w.addr + w.size) >> 12


def test_workload_parameter_errors():
    m = Machine(memory="64M")
    p = m.spawn()
    with pytest.raises(ValueError, match="unknown parameters"):
        make("zipf", m, p, size="4M", bogus=1)
    with pytest.raises(ValueError, match="populate"):
        make("zipf", m, p, size="4M", populate=0)
    with pytest.raises(ValueError, match="hugepage"):
        make("zipf", m, p, size="4M", hugepage="later")
    with pytest.raises(ValueError, match="unknown workload"):
        make("gups", m, p)


def test_redis_snapshot_forks_a_cow_child():
    m = Machine(memory="256M", seed=1)
    p = m.spawn(name="redis")
    w = make("redis", m, p, size="16M", snapshot_every=20, snapshot_seconds=10)
    w.setup()
    w.tick(10.0)
    w.tick(10.0)                              # t = 20: bgsave forks
    assert w.child is not None and w.child.alive
    assert m.vmstat["thp_split_pmd"] >= 0
    w.tick(10.0)                              # parent writes under COW
    w.tick(10.0)                              # t = 40: child done, a new one forked
    m.check()


def test_fragment_scattered_pollutes_more_pageblocks_than_packed():
    free = {}
    for pattern in ("scattered", "packed"):
        m = Machine(memory="1G", seed=0)
        got = fragment(m, 0.001, pattern)
        assert got == int(m.nr_pages * 0.001)
        free[pattern] = m.page_alloc.free_blocks_at_least(9)
        m.check()
    assert free["scattered"] < free["packed"] - 100
    with pytest.raises(ValueError):
        fragment(Machine(memory="64M"), 0.1, "diagonal")


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "thpcore.cli.main", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("thpcore ")


def test_bench_figures_are_positive_and_memory_within_target():
    from thpcore.lab.bench import bench_bytes_per_page, bench_collapse, bench_faults, reference_buddy
    assert bench_collapse() > 0 and bench_faults(False) > 0 and reference_buddy(256) > 0
    assert 12 < bench_bytes_per_page() <= 16


def test_thpmaps_subcommand_is_the_scripts_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["thpmaps", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: thpmaps [-h] [--pid pid | --cgroup path]")


def test_scale_run_on_a_small_host(capsys):
    from thpcore.lab.scale import main as scale_main
    assert scale_main(["--memory", "1G", "--khugepaged-seconds", "5"]) == 0
    out = capsys.readouterr().out
    assert "populated 250 processes" in out and "collapses" in out and "compact_memory" in out


def test_fleet_mix_expands_deterministically():
    text = SMALL + """
[fleet]
tenants = 12
seed = 7
mix = { zipf = 2, churn = 1, redis = 1 }
sizes = ["8M", "16M"]
priorities = [0, 5]
populate = [0.5, 1.0]
hugepage = "after"
"""
    a, b = parse_scenario(text), parse_scenario(text)
    fleet_procs = [p for p in a.processes if p["name"].startswith("tenant")]
    assert len(fleet_procs) == 12 and a.processes == b.processes
    assert {p["workload"] for p in fleet_procs} <= {"zipf", "churn", "redis"}
    assert len({p["workload"] for p in fleet_procs}) >= 2
    assert {p["priority"] for p in fleet_procs} <= {0, 5}
    a.run["duration"], a.run["variants"] = 20, ["uhugepaged"]
    res = run_variant(a, "uhugepaged")
    assert {r["process"] for r in res.timeline} >= {p["name"] for p in fleet_procs}
    other = parse_scenario(text.replace("seed = 7", "seed = 8"))
    assert other.processes != a.processes
    for bad in ['[fleet]\nmix = { gups = 1 }\n', '[fleet]\ntenants = 0\n', '[fleet]\nsize = 1\n']:
        with pytest.raises(ValueError):
            parse_scenario(bad)


def test_fragment_of_a_fresh_zone_is_built_once_and_reused_exactly():
    from thpcore.lab import workloads
    workloads._FRAGMENTED.clear()
    hashes = []
    for _ in range(3):                    # built, then restored from the kept state twice
        m = Machine(memory="1G", seed=0)
        got = fragment(m, 0.001, "scattered")
        m.check()
        hashes.append((got, m.state_hash(), m.page_alloc.zone.watermarks()))
    assert len(workloads._FRAGMENTED) == 1
    assert hashes[0] == hashes[1] == hashes[2]
    # Not fresh any more (a page allocated first): built, not restored.
    m = Machine(memory="1G", seed=0)
    m.kernel_alloc(0, "unmovable")
    fragment(m, 0.001, "scattered")
    m.check()
    assert m.state_hash() != hashes[0][1]
    with pytest.raises(ValueError, match="cannot restore"):
        Machine(memory="512M").page_alloc.zone.restore_state(
            next(iter(workloads._FRAGMENTED.values()))[0])
