"""mremap beyond the live fidelity scenarios (thpcore.cli.fidelity runs those against the kernel):
invariants, contents, and the page-table pool growing in the middle of a move."""

import numpy as np
import pytest

import thpcore
from thpcore import MADV_HUGEPAGE, MREMAP_FIXED, MREMAP_MAYMOVE
from thpcore.lab.workloads import make

MB, HP, PAGE = 1 << 20, 2 << 20, 4096


def test_pool_growth_during_a_move_keeps_every_pte_once():
    """move_ptes needs a destination table; allocating it may grow the PTE pool (new storage):
    the source PTEs must still be cleared in the live storage, not in a stale view."""
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="never")
    p = m.spawn()
    pt = m.page_tables
    src = p.mmap(4 * MB)
    p.write(src, 4 * MB, 5)
    filler = p.mmap(512 * MB)
    off = 0
    while pt.nr_tables < pt.capacity:            # use up every reserved table id
        p.write(filler + off, PAGE, 1)
        off += HP
    capacity = pt.capacity
    new = p.mremap(src, 4 * MB, 4 * MB, MREMAP_MAYMOVE | MREMAP_FIXED, 0x500000001000)
    assert pt.capacity > capacity                # the pool grew during the move
    m.check()
    assert (p.read(new, 4 * MB) == 5).all()
    assert p.mm.anon_rss == 1024 + off // HP


@pytest.mark.parametrize("align", [False, True])
def test_realloc_workload_splits_thps_unless_lengths_are_2m_multiples(align):
    m = thpcore.Machine("2G", seed=0, transparent_hugepage="always")
    p = m.spawn()
    w = make("realloc", m, p, size="256M", start="3M", growth=1.5, align_2m=align, hugepage=True)
    w.setup()
    for _ in range(10):
        w.tick(1.0)
        m.check()
    assert w.generations == 0 and w.length > 100 * MB
    if align:
        assert m.vmstat["thp_split_pmd"] == 0
        assert p.mm.nr_huge_pmds() == w.length // HP
    else:
        assert m.vmstat["thp_split_pmd"] > 0
        assert p.mm.nr_huge_pmds() < w.length // HP // 2
    assert np.count_nonzero(p.read(w.buf, w.length)) == w.length // PAGE


def test_mremap_argument_types_and_state_on_error():
    from conftest import unchanged
    m = thpcore.Machine("256M", seed=0)
    p = m.spawn()
    a = p.mmap(4 * MB)
    p.madvise(a, 4 * MB, MADV_HUGEPAGE)
    p.write(a, 4 * MB, 1)
    with pytest.raises(TypeError):
        p.mremap(a, 4 * MB, "8M")
    for args in [(a + 1, PAGE, PAGE), (a, PAGE, 0), (a, PAGE, PAGE, 8),
                 (a, 4 * MB, 4 * MB, MREMAP_MAYMOVE | MREMAP_FIXED, a + 2 * MB)]:
        unchanged(m, lambda: p.mremap(*args), OSError)


def test_example_realloc_scenario_shows_the_alignment_effect():
    from pathlib import Path

    from thpcore.lab.scenario import parse_scenario, run_variant
    text = (Path(__file__).parents[2] / "examples" / "realloc-alignment.toml").read_text()
    res = run_variant(parse_scenario(text), "khugepaged")
    last = {row["process"]: row for row in res.timeline if row["time_s"] == 30.0}
    assert last["aligned"]["thp_pct"] == 100.0
    assert last["glibc"]["thp_pct"] < 100.0


def test_growing_a_locked_mapping_populates_and_counts_the_new_part():
    m = thpcore.Machine("256M", seed=0)
    p = m.spawn()
    a = p.mmap(4 * MB)
    p.munmap(a + 2 * MB, 2 * MB)                     # room to grow in place
    p.write(a, 2 * MB, 3)
    p.mlock(a, 2 * MB)
    locked = p.mm.locked_vm
    assert p.mremap(a, 2 * MB, 4 * MB) == a
    assert p.mm.locked_vm == locked + 512
    assert p.smaps_rollup()["Rss"] == 4096           # mlock_future: the new part is faulted in
    assert (p.read(a, 2 * MB) == 3).all() and not p.read(a + 2 * MB, 2 * MB).any()
    p.munlock(a, MB)
    assert p.mm.locked_vm == 768                     # VmLck follows the locked VMAs
    m.check()
