import csv

import pytest

from thpcore.cli.main import main
from thpcore.lab.sweep import Sweep, apply_parameter, run_sweep
from thpcore.lab.scenario import parse_scenario

from cases import SMALL

SWEEP = """
scenario = "small.toml"
seeds = [0, 1]
variants = ["tuned", "uhugepaged"]
[parameters]
"process.db.size" = ["32M", "64M"]
"variant.uhugepaged.budget" = [1, 4]
"run.duration" = [40]
"""


@pytest.fixture
def sweep_file(tmp_path):
    (tmp_path / "small.toml").write_text(SMALL)
    path = tmp_path / "sw.toml"
    path.write_text(SWEEP)
    return path


def rows(path):
    return {r["job"]: {k: v for k, v in r.items() if k != "wall_s"}
            for r in csv.DictReader(open(path))}


def test_product_and_zip(sweep_file):
    sw = Sweep(sweep_file.read_text(), sweep_file.parent)
    assert len(sw.points()) == 4 and len(list(sw.jobs())) == 16
    z = Sweep(sweep_file.read_text().replace('seeds', 'mode = "zip"\nseeds')
              .replace('"run.duration" = [40]', '"run.duration" = [40, 20]'), sweep_file.parent)
    assert z.points() == [{"process.db.size": "32M", "variant.uhugepaged.budget": 1,
                           "run.duration": 40},
                          {"process.db.size": "64M", "variant.uhugepaged.budget": 4,
                           "run.duration": 20}]


def test_sweep_rows_are_the_same_on_every_executor_and_resume(sweep_file, tmp_path):
    serial = run_sweep(Sweep(sweep_file.read_text(), sweep_file.parent), tmp_path / "a", workers=1)
    ra = rows(serial)
    assert len(ra) == 16
    budgets = {(r["param:variant.uhugepaged.budget"], r["variant"]) for r in ra.values()}
    assert len(budgets) == 4
    pool = run_sweep(Sweep(sweep_file.read_text(), sweep_file.parent), tmp_path / "b", workers=2)
    assert rows(pool) == ra
    # Interrupted: the last five rows never made it to disk. A rerun computes just those.
    lines = serial.read_text().splitlines(keepends=True)
    serial.write_text("".join(lines[:-5]))
    run_sweep(Sweep(sweep_file.read_text(), sweep_file.parent), tmp_path / "a", workers=1)
    text = serial.read_text()
    assert rows(serial) == ra and text.count("\n") == 17
    # The same directory with a different sweep is refused, not mixed.
    other = Sweep(sweep_file.read_text().replace("[0, 1]", "[7]"), sweep_file.parent)
    with pytest.raises(ValueError, match="different sweep"):
        run_sweep(other, tmp_path / "a")


def test_dask_local_cluster_gives_the_same_rows(sweep_file, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    sw = Sweep(sweep_file.read_text().replace("[0, 1]", "[0]"), sweep_file.parent)
    serial = rows(run_sweep(sw, tmp_path / "s", workers=1))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        dask_rows = rows(run_sweep(sw, tmp_path / "d", scheduler=cluster.scheduler_address))
    assert dask_rows == serial and len(serial) == 8


def test_sweep_cli(sweep_file, tmp_path, capsys):
    text = sweep_file.read_text().replace("[0, 1]", "[0]").replace('["32M", "64M"]', '["32M"]')
    sweep_file.write_text(text)
    assert main(["sweep", str(sweep_file), "-o", str(tmp_path / "o"), "-j", "1", "-q"]) == 0
    assert "4 jobs (2 points x 1 seeds x 2 variants)" in capsys.readouterr().out


@pytest.mark.parametrize("param,value,msg", [
    ("machine.memroy", "1G", "not one of"),
    ("process.nobody.size", "1G", "no process"),
    ("process.db.sise", "1G", "not one of"),
    ("variant.nope.budget", 1, "no \\[variant.nope\\]"),
    ("bogus.x", 1, "the table must be"),
    ("machine", 1, "TABLE.KEY"),
])
def test_bad_parameters(param, value, msg):
    with pytest.raises(ValueError, match=msg):
        apply_parameter(parse_scenario(SMALL), param, value)


def test_bad_sweeps(sweep_file):
    base = sweep_file.parent
    with pytest.raises(ValueError, match="unknown key"):
        Sweep('sceanrio = "x"\n', base)
    with pytest.raises(ValueError, match="same length"):
        Sweep('scenario = "small.toml"\nmode = "zip"\n[parameters]\n"run.duration" = [1, 2]\n'
              '"run.interval" = [1]\n', base)
    with pytest.raises(ValueError, match="non-empty list"):
        Sweep('scenario = "small.toml"\n[parameters]\n"run.duration" = 5\n', base)
    with pytest.raises(ValueError, match="interval"):          # an invalid point, found up front
        Sweep('scenario = "small.toml"\n[parameters]\n"run.duration" = [0]\n', base)


def test_example_sweep_runs(tmp_path):
    import csv
    from pathlib import Path

    from thpcore.lab.sweep import Sweep, run_sweep
    path = Path(__file__).parents[2] / "examples" / "realloc-sweep.toml"
    sw = Sweep(path.read_text(), path.parent)
    assert len(list(sw.jobs())) == 9
    run_sweep(sw, tmp_path, workers=1)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 9
    assert {r["param:process.glibc.params.growth"] for r in rows} == {"1.25", "1.5", "2.0"}
