"""Differential tests: every scenario of thpcore.cli.fidelity's suite (faults, huge zero page,
partial THP operations, fork/COW, pageout, madvise errno, MADV_COLLAPSE cases and ranges,
khugepaged limits) run on this machine's kernel and in the simulator must agree exactly
(a mismatch is measured again up to fidelity.ATTEMPTS times: machine-wide counters can pick up
another process's THP activity; a real difference shows in every attempt)."""

import pytest

from thpcore.cli import fidelity

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


def test_a_real_difference_fails_every_attempt(monkeypatch):
    """The retry only absorbs noise: a scenario whose simulated side differs still fails."""
    if fidelity.available():
        pytest.skip(fidelity.available())
    calls = []

    def scenario(b):
        calls.append(type(b).__name__)
        return "live" if isinstance(b, fidelity.Live) else "sim"
    live, sim = fidelity.run_case("always different", scenario, {"enabled": "madvise"})
    assert live != sim and calls == ["Live", "Sim"] * fidelity.ATTEMPTS


def test_fidelity_json_report(tmp_path):
    import json
    if fidelity.available():
        pytest.skip(fidelity.available())
    out = tmp_path / "fid.json"
    assert fidelity.main(only="mremap errno", json_path=str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["mismatches"] == 0 and doc["kernel"]
    (rec,) = doc["scenarios"]
    assert rec["scenario"] == "mremap errno" and rec["match"] is True
    assert rec["live"] == rec["simulated"] and 22 in rec["live"]
