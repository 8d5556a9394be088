"""Differential tests: every scenario of thpcore.fidelity's suite (faults, huge zero page,
partial THP operations, fork/COW, pageout, madvise errno, MADV_COLLAPSE cases and ranges,
khugepaged limits) run on this machine's kernel and in the simulator must agree exactly."""

import pytest

from thpcore import fidelity

pytestmark = pytest.mark.live


@pytest.mark.parametrize("name, scenario, kwargs", fidelity.SUITE, ids=[s[0] for s in fidelity.SUITE])
def test_live_and_simulated_agree(name, scenario, kwargs):
    why = fidelity.available()
    if why:
        pytest.skip(why)
    live, sim = fidelity.run_case(name, scenario, kwargs)
    assert live == sim


def test_fidelity_command_reports_every_scenario(capsys):
    if fidelity.available():
        pytest.skip(fidelity.available())
    rc = fidelity.main(only="MADV_COLLAPSE range")
    out = capsys.readouterr().out
    assert rc == 0 and "4 scenarios, 0 mismatches" in out


def test_fidelity_command_without_privileges(monkeypatch, capsys):
    monkeypatch.setattr(fidelity, "available", lambda: "needs root to set the THP knobs")
    assert fidelity.main() == 2
    assert "cannot run on this host" in capsys.readouterr().out
