import pytest

from thpcore.cli.main import main
from thpcore.lab.scenario import parse_scenario, run_variant
from thpcore.lab.trace import parse_trace, replay

from cases import SMALL

REDIS = SMALL.replace('workload = "zipf"', 'workload = "redis"\nparams = { snapshot_every = 40, '
                      'snapshot_seconds = 20 }')


@pytest.mark.parametrize("text", [SMALL, REDIS], ids=["churn+zipf", "redis-fork"])
def test_recorded_trace_replays_to_the_same_state(tmp_path, text):
    sc = parse_scenario(text)
    path = tmp_path / "k.trace"
    with open(path, "w") as f:
        original = run_variant(sc, "tuned", trace=f)
    tr = parse_trace(path.read_text())
    ops = {r.op for r in tr.records}
    assert {"spawn", "mmap", "madvise", "write", "sleep"} <= ops
    if text is REDIS:
        assert {"fork", "exit"} <= ops
    assert tr.machine == {"memory": "1G", "seed": 3}
    assert tr.fragment == (0.0005, "scattered")
    res = replay(tr)
    res.machine.check()
    # The same operations at the same times on the same machine: bit-for-bit the same state.
    assert res.machine.state_hash() == original.summary["state_hash"]


def test_replay_counts_failed_syscalls_and_reports(tmp_path, capsys):
    path = tmp_path / "t.trace"
    path.write_text("# thpcore-trace 1\n# machine memory=256M seed=1\n"
                    "# sysfs /sys/kernel/mm/transparent_hugepage/enabled always\n"
                    "0 a spawn app\n"
                    "0 a mmap 0x7f0000000000 8M\n"
                    "0.5 a write 0x7f0000000000 8M\n"
                    "1 a madvise 0x7f0000000000 8M collapse\n"
                    "1 a madvise 0x7f0000001000 4K bogus_number_free\n".replace(
                        " bogus_number_free", " 999") +
                    "1 a write 0x100000000000 4K\n"
                    "2 - sleep 10\n"
                    "12 a fork b\n12 b exit\n")
    res = replay(path)
    a = res.processes["a"]
    assert a.smaps_rollup()["AnonHugePages"] == 8 * 1024      # THP at fault (enabled=always)
    assert res.machine.clock_ns == 12 * 10**9
    assert not res.processes["b"].alive
    assert res.errors[("madvise", "EINVAL")] == 1
    assert res.errors[("write", "EFAULT")] == 1 and sum(res.errors.values()) == 2
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "replayed 9 records" in out and "256 MiB machine" in out and "errors: madvise EINVAL x1" in out


@pytest.mark.parametrize("text,msg", [
    ("0 a spawn x\n", "first line"),
    ("# thpcore-trace 1\n0 a frobnicate\n", "unknown operation"),
    ("# thpcore-trace 1\n0 a mmap 0x1000\n", "takes 2..2"),
    ("# thpcore-trace 1\n1 a spawn x\n0 a exit\n", "backwards"),
    ("# thpcore-trace 1\nx a spawn x\n", "bad time"),
    ("# thpcore-trace 1\n0 a madvise 0 4K sideways\n", "unknown advice"),
    ("# thpcore-trace 1\n0 a mmap 0x1000 4Q\n", "line 2"),
])
def test_malformed_traces(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_trace(text)


def test_replay_needs_spawned_processes(tmp_path):
    with pytest.raises(ValueError, match="no process"):
        replay(parse_trace("# thpcore-trace 1\n0 a write 0 4K\n"))


def test_run_writes_traces(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SMALL.replace("duration = 120", "duration = 40"))
    assert main(["run", str(path), "-o", str(tmp_path / "o"), "-q", "--no-plots",
                 "--trace"]) == 0
    names = sorted(p.name for p in (tmp_path / "o").glob("*.trace"))
    assert names == ["khugepaged.trace", "tuned.trace", "uhugepaged.trace"]


def test_mremap_records_and_replays(tmp_path):
    import thpcore
    from thpcore import MADV_HUGEPAGE, MREMAP_FIXED, MREMAP_MAYMOVE
    from thpcore.lab.trace import TraceWriter
    path = tmp_path / "m.trace"
    m = thpcore.Machine("1G", seed=2)
    with open(path, "w") as f:
        w = TraceWriter(f, m, {"machine": {"memory": "1G", "seed": 2}, "sysfs": {},
                               "fragment": None, "cgroups": []})
        p = w.spawn("realloc", "")
        a = p.mmap(8 << 20)
        p.madvise(a, 8 << 20, MADV_HUGEPAGE)
        p.write(a, 6 << 20)
        b = p.mremap(a, 6 << 20, 12 << 20, MREMAP_MAYMOVE)       # grows, may move
        p.write(b + (6 << 20), 1 << 20)
        c = p.mremap(b, 4 << 20, 4 << 20, MREMAP_MAYMOVE | MREMAP_FIXED, 0x500000001000)
        p.read(c, 4 << 20)
        p.mremap(b + (4 << 20), 8 << 20, 2 << 20)               # shrink in place
    tr = parse_trace(path.read_text())
    assert [r.op for r in tr.records].count("mremap") == 3
    res = replay(tr)
    res.machine.check()
    assert not res.errors
    assert res.machine.state_hash() == m.state_hash()
    assert m.vmstat["thp_split_pmd"] >= 2                         # the unaligned move split
