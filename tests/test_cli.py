import csv
import subprocess
import sys

import pytest

from thpcore.cli import main
from thpcore.scenario import load_scenario, parse_scenario, run_scenario


def test_default_scenario_runs_and_shows_the_fragmentation_gap(capsys, tmp_path):
    assert main(["run", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "scenario unmovable-fragmentation: 4G machine" in out
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    by = {r["pattern"]: r for r in rows}
    assert set(by) == {"scattered", "packed", "none"}
    # Without slab every 2 MiB block is free again; slab made at boot costs a few blocks;
    # slab grown under memory pressure pollutes many more (4 GiB = 2048 blocks).
    assert int(by["none"]["free_2M_blocks"]) == 2048
    assert int(by["packed"]["free_2M_blocks"]) > 2000
    assert int(by["scattered"]["free_2M_blocks"]) < int(by["packed"]["free_2M_blocks"]) - 500
    assert int(by["scattered"]["pageblocks_polluted"]) > 10 * int(by["packed"]["pageblocks_polluted"])
    assert by["scattered"]["unmovable_MiB"] == by["packed"]["unmovable_MiB"]


def test_scenario_is_deterministic():
    sc = load_scenario()
    sc.machine["memory"] = "256M"
    a, b = run_scenario(sc), run_scenario(sc)
    assert a == b
    sc.machine["seed"] = 1
    assert run_scenario(sc)[0]["state_hash"] != a[0]["state_hash"]


def test_scenario_file_and_errors(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[machine]\nmemory = "128M"\n[fragmenter]\npatterns = ["none"]\n'
                    '[sysfs]\n"/sys/kernel/mm/transparent_hugepage/enabled" = "always"\n')
    assert main(["run", str(path)]) == 0
    assert "none" in capsys.readouterr().out
    path.write_text('[machine]\nmemroy = "128M"\n')
    assert main(["run", str(path)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.parametrize("bad", ['[fragmenter]\nfill = 0', '[fragmenter]\npatterns = ["x"]',
                                 '[fragmenter]\ncycles = 0', '[bogus]\n'])
def test_scenario_validation(bad):
    with pytest.raises(ValueError):
        parse_scenario(bad)


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "thpcore.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("thpcore ")
