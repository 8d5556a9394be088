"""The simulator's collapse scan and collapse (the engine's scan_pmd / scan_regions /
collapse_run / collapse_copy, driven through khugepaged and MADV_COLLAPSE) against the
pure-Python reference written from mm/khugepaged.c (thpcore.reference.khugepaged).

States are built through the public API only: writes, reads, MADV_DONTNEED, MADV_PAGEOUT (with
swap), MADV_COLD (old PTEs), MADV_COLLAPSE (PTE-mapped THPs once cut), fork() (shared pages),
and the khugepaged max_ptes_none/swap/shared knobs."""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import thpcore
from thpcore import (MADV_COLD, MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE, MADV_PAGEOUT,
                     _engine)
from thpcore.mm import khugepaged as sim
from thpcore.reference import khugepaged as ref
from thpcore.reference.khugepaged import (CollapseControl, Frames, ScanResult, SwapDevice,
                                          collapse_huge_page, hpage_collapse_scan_pmd)

PAGE, HPAGE = 4096, 2 << 20
N = 3                                   # regions per process
NPAGES = N * 512
USER = ref.PG_HEAD | ref.PG_TAIL | ref.PG_LRU


# ---- building states --------------------------------------------------------------------------

page_range = st.tuples(
    st.integers(0, NPAGES - 1),
    st.one_of(st.sampled_from([1, 2, 16, 63, 64, 65, 128, 255, 256, 257, 300, 448, 511, 512, 1024]),
              st.integers(1, NPAGES)))
pre_op = st.tuples(st.sampled_from(["write", "write", "read", "dontneed", "pageout", "cold",
                                    "collapse", "cut"]), page_range)
post_op = st.tuples(st.sampled_from(["write", "read", "dontneed", "pageout", "cold", "cold"]),
                    page_range)
limit = st.one_of(st.integers(0, 511), st.sampled_from([0, 1, 64, 255, 256, 511]))
scenario = st.fixed_dictionaries({
    "first": page_range,
    "pre": st.lists(pre_op, max_size=8),
    "fork": st.booleans(),
    "child": st.lists(post_op, max_size=5),
    "post": st.lists(post_op, max_size=5),
    "none": limit, "swap": limit, "shared": limit,
})


class World:
    """A machine, a parent (and maybe a child) process over N regions, and the content every
    page of each process should read back (the shadow)."""

    def __init__(self, sc):
        m = self.m = thpcore.Machine("128M", swap="32M", seed=0)
        m.thp.enabled = "never"                  # no THP at fault; collapses make them
        self.p = m.spawn()
        self.a = self.p.mmap(N * HPAGE)
        assert self.a % HPAGE == 0
        self.shadow = {self.p.pid: [0] * NPAGES}
        self.value = 0
        self.child = None
        self.do(self.p, ("write", sc["first"]))
        for op in sc["pre"]:
            self.do(self.p, op)
        if sc["fork"]:
            self.child = self.p.fork()
            self.shadow[self.child.pid] = list(self.shadow[self.p.pid])
            for op in sc["child"]:
                self.do(self.child, op)
        for op in sc["post"]:
            self.do(self.p, op)
        k = m.thp.khugepaged
        k.max_ptes_none, k.max_ptes_swap, k.max_ptes_shared = sc["none"], sc["swap"], sc["shared"]

    @classmethod
    def around(cls, m, p, child, a):
        """A World over processes built by hand."""
        w = cls.__new__(cls)
        w.m, w.p, w.child, w.a = m, p, child, a
        return w

    def do(self, proc, op):
        kind, (start, n) = op
        n = min(n, NPAGES - start)
        addr, length = self.a + start * PAGE, n * PAGE
        if kind == "write":
            self.value += 1
            proc.write(addr, length, value=self.value)
            self.shadow[proc.pid][start:start + n] = [self.value] * n
        elif kind == "read":
            got = proc.read(addr, length)
            assert got.tolist() == self.shadow[proc.pid][start:start + n]
        elif kind == "dontneed":
            proc.madvise(addr, length, MADV_DONTNEED)
            self.shadow[proc.pid][start:start + n] = [0] * n
        elif kind == "pageout":
            proc.madvise(addr, length, MADV_PAGEOUT)
        elif kind == "cold":
            proc.madvise(addr, length, MADV_COLD)
        else:                                    # MADV_COLLAPSE of the region holding start
            region = self.a + (start // 512) * HPAGE
            try:
                proc.madvise(region, HPAGE, MADV_COLLAPSE)
            except OSError:
                return
            if kind == "cut":                    # then unmap part of it: a PTE-mapped THP
                end = min(start + n, (start // 512 + 1) * 512, start + 511)
                self.do(proc, ("dontneed", (start, end - start)))

    def regions(self):
        return [self.a + r * HPAGE for r in range(N)]

    def pmd(self, mm, region):
        """The PMD entry, or None where no PMD table page exists (mm_find_pmd() fails)."""
        return None if region >> 30 not in mm.pmd_dir else mm.get_pmd(region)

    def table(self, pmd):
        """The PTE table a PMD entry points to, or the one a huge entry deposited."""
        return self.m.page_tables.table(pmd >> 32).tolist() if pmd else [0] * 512

    def live(self):
        return [p for p in (self.p, self.child) if p is not None and p.alive]

    # ---- the reference's view of the machine ---------------------------------------------------

    def mm_count(self):
        """head pfn -> how many mms map some page of the THP (folio->_mm_ids' question)."""
        f = self.m.page_alloc.zone.frames()
        owners = {}
        for proc in self.live():
            for region, entry in proc.mm.populated_pmds():
                kind = entry & 3
                if kind == _engine.PY_PMD_KIND_HUGE:
                    owners.setdefault(((entry >> 5) & 0x7FFFFFF) << 9, set()).add(proc.pid)
                elif kind == _engine.PY_PMD_KIND_TABLE:
                    for pte in self.table(entry):
                        if pte & 1:
                            pfn = pte >> 4
                            head = pfn & ~511
                            if f["order"][head] == 9 and f["flags"][head] & ref.PG_HEAD:
                                owners.setdefault(head, set()).add(proc.pid)
        return {h: len(s) for h, s in owners.items()}

    def swap(self):
        """Slot references (swap PTEs across every live mm) and each slot's content (what the
        process that swapped it out would read back)."""
        refs, content = {}, {}
        for proc in self.live():
            for r, region in enumerate(self.regions()):
                for i, pte in enumerate(self.table(self.pmd(proc.mm, region))):
                    if pte & 0xF == 2:
                        slot = pte >> 4
                        refs[slot] = refs.get(slot, 0) + 1
                        word = self.shadow[proc.pid][r * 512 + i]
                        assert content.setdefault(slot, word) == word
        return SwapDevice(refs, content)

    def frames(self):
        f = self.m.page_alloc.zone.frames()
        return Frames(f["flags"], f["order"], f["mapcount"], f["content"],
                      mm_count=self.mm_count())

    def snapshot(self):
        return self.frames(), self.swap(), self.p.mm.anon_rss, self.p.mm.swap_ents, \
            self.m.page_tables.swap_used

    def controls(self):
        k = self.m.thp.khugepaged
        return (CollapseControl(True, k.max_ptes_none, k.max_ptes_swap, k.max_ptes_shared),
                CollapseControl(False))


def same_frames(m, frames):
    """The engine's frame table equals the reference's (allocated-ness and order everywhere;
    mapcount and content of user frames); scratch frames past the end are the reference's
    swap-in pages, freed again."""
    f = m.page_alloc.zone.frames()
    n = len(f["flags"])
    rflags = np.array(frames.flags[:n], dtype=np.uint8)
    assert np.array_equal(f["flags"] & USER, rflags & USER), \
        np.nonzero((f["flags"] & USER) != (rflags & USER))[0][:8]
    heads = (f["flags"] & ref.PG_HEAD) != 0
    assert np.array_equal(f["order"][heads], np.array(frames.order[:n])[heads])
    user = (f["flags"] & ref.PG_LRU) != 0
    assert np.array_equal(f["mapcount"][user], np.array(frames.mapcount[:n])[user])
    assert np.array_equal(f["content"][user], np.array(frames.content[:n], dtype=np.uint32)[user])
    for pfn in range(n, frames.nr_pages):
        assert not frames.flags[pfn] & USER


def check_events(events, expected):
    got = {int(e["address"]): e for e in events}
    assert sorted(got) == sorted(expected)
    for addr, (result, scan) in expected.items():
        e = got[addr]
        assert ScanResult(int(e["result"])) == result, (hex(addr), scan)
        if scan is not None:
            assert (e["none_or_zero"], e["unmapped"], e["shared"], e["referenced"]) == \
                (scan.none_or_zero, scan.unmapped, scan.shared, scan.referenced), hex(addr)


# ---- the tests ----------------------------------------------------------------------------------

def test_encodings_match_the_engine():
    assert [r.name for r in ScanResult] == list(_engine.SCAN_RESULTS)
    assert [r.name for r in ScanResult] == [r.name for r in sim.ScanResult]
    assert (ref.PTE_PRESENT, ref.PTE_YOUNG, ref.PTE_DIRTY, ref.PTE_WRITE) == \
        (_engine.PY_PTE_PRESENT, _engine.PY_PTE_YOUNG, _engine.PY_PTE_DIRTY, _engine.PY_PTE_WRITE)
    assert (ref.PTE_KIND_SWAP, ref.PTE_KIND_ZERO) == (_engine.PY_PTE_KIND_SWAP,
                                                      _engine.PY_PTE_KIND_ZERO)
    assert (ref.PMD_KIND_TABLE, ref.PMD_KIND_HUGE, ref.PMD_KIND_HUGE_ZERO) == \
        (_engine.PY_PMD_KIND_TABLE, _engine.PY_PMD_KIND_HUGE, _engine.PY_PMD_KIND_HUGE_ZERO)
    assert (ref.PG_HEAD, ref.PG_TAIL, ref.PG_LRU) == (_engine.PY_PG_HEAD, _engine.PY_PG_TAIL,
                                                      _engine.PY_PG_LRU)
    from thpcore.mm.mm_types import PMD_DIRTY, PMD_WRITE, PMD_YOUNG, make_huge_pmd
    assert (ref.PMD_YOUNG, ref.PMD_DIRTY, ref.PMD_WRITE) == (PMD_YOUNG, PMD_DIRTY, PMD_WRITE)
    assert ref.mk_huge_pmd(1024, 7, True, True, True) == make_huge_pmd(1024, 7, 0x1C)


def test_reference_rules_by_hand():
    """The kernel rules on hand-made tables: the limits bite at limit + 1, zero-page PTEs
    count as none, an armed userfaultfd makes any none PTE fatal, and khugepaged needs a young
    PTE (half of them when it would swap in) while MADV_COLLAPSE does not."""
    n = 512
    frames = Frames([ref.PG_HEAD | ref.PG_LRU] * n, [0] * n, [1] * n, [1] * n)
    table = [ref.mk_pte(i, young=False, dirty=True, write=True) for i in range(n)]
    pmd = (5 << 32) | ref.PMD_KIND_TABLE
    khug, madv = CollapseControl(True, 3, 2, 1), CollapseControl(False)

    def scan(ptes, cc=khug, **kw):
        return hpage_collapse_scan_pmd(pmd, ptes, frames, cc, **kw)

    assert scan(table).result == ScanResult.SCAN_LACK_REFERENCED_PAGE
    assert scan(table, madv).result == ScanResult.SCAN_SUCCEED
    young = list(table)
    young[100] |= ref.PTE_YOUNG
    assert scan(young).result == ScanResult.SCAN_SUCCEED
    t = list(young)
    t[0], t[1], t[2] = 0, ref.PTE_KIND_ZERO, 0
    assert (scan(t).result, scan(t).none_or_zero) == (ScanResult.SCAN_SUCCEED, 3)
    t[3] = ref.PTE_KIND_ZERO
    assert (scan(t).result, scan(t).event) == (ScanResult.SCAN_EXCEED_NONE_PTE,
                                               "thp_scan_exceed_none_pte")
    assert scan(t, madv).result == ScanResult.SCAN_SUCCEED
    assert scan(t, madv, userfaultfd_armed=True).result == ScanResult.SCAN_EXCEED_NONE_PTE
    s = list(young)
    s[7], s[8] = (9 << 4) | ref.PTE_KIND_SWAP, (10 << 4) | ref.PTE_KIND_SWAP
    assert scan(s).result == ScanResult.SCAN_LACK_REFERENCED_PAGE     # 1 young < 256
    s[9] = (11 << 4) | ref.PTE_KIND_SWAP
    assert scan(s).result == ScanResult.SCAN_EXCEED_SWAP_PTE
    assert (scan(s, madv).result, scan(s, madv).unmapped) == (ScanResult.SCAN_SUCCEED, 3)
    shared = Frames(frames.flags, frames.order, [2, 2] + [1] * (n - 2), frames.content)
    assert hpage_collapse_scan_pmd(pmd, young, shared, khug).result == ScanResult.SCAN_EXCEED_SHARED_PTE
    ro = [pte & ~ref.PTE_WRITE for pte in young]
    assert scan(ro).result == ScanResult.SCAN_SUCCEED                 # no SCAN_PAGE_RO in 6.18
    assert hpage_collapse_scan_pmd(None, table, frames, khug).result == ScanResult.SCAN_PMD_NULL
    assert hpage_collapse_scan_pmd(0, table, frames, khug).result == ScanResult.SCAN_PMD_NONE
    assert hpage_collapse_scan_pmd(ref.PMD_KIND_HUGE_ZERO, table, frames, khug).result == \
        ScanResult.SCAN_PMD_MAPPED


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenario)
def test_scan_matches_engine(sc):
    """Every region of every process: the reference scan and the engine's scan_pmd (as the
    simulator calls it for khugepaged and for MADV_COLLAPSE) agree on the code and counters."""
    w = World(sc)
    frames, pt = w.frames(), w.m.page_tables
    for cc in w.controls():
        for proc in w.live():
            for region in w.regions():
                pmd = w.pmd(proc.mm, region)
                out = hpage_collapse_scan_pmd(pmd, w.table(pmd), frames, cc)
                event(f"{'khugepaged' if cc.is_khugepaged else 'madv'}: {out.result.name}")
                if pmd is None or pmd & 3 != _engine.PY_PMD_KIND_TABLE:
                    assert out.result in (ScanResult.SCAN_PMD_NONE, ScanResult.SCAN_PMD_MAPPED)
                    continue
                lim = cc.is_khugepaged
                code, counts = pt.scan_pmd(pmd >> 32, lim, cc.max_ptes_none if lim else -1,
                                           cc.max_ptes_swap if lim else -1,
                                           cc.max_ptes_shared if lim else -1, sim.REQUIRE_WRITABLE)
                assert ScanResult(code) == out.result, (hex(region), counts, out)
                assert (counts["none_or_zero"], counts["unmapped"], counts["shared"],
                        counts["referenced"]) == (out.none_or_zero, out.unmapped, out.shared,
                                                  out.referenced)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenario)
def test_khugepaged_pass_matches_reference(sc):
    """One khugepaged pass over the parent: the per-region results and counters it records,
    the vm events, and the state it leaves (frames, PMDs, tables, RSS, swap) are what the
    reference scan + collapse_huge_page() give, region by region in address order."""
    w = World(sc)
    m, p = w.m, w.p
    m.thp.enabled = "madvise"
    p.madvise(w.a, N * HPAGE, MADV_HUGEPAGE)            # registers the parent only
    assert p.mm.registered and (w.child is None or not w.child.mm.registered)
    m.thp.khugepaged.pages_to_scan = 8 * 512
    frames, swap, rss0, swp0, used0 = w.snapshot()
    cc, _ = w.controls()
    before = [(w.pmd(p.mm, region), w.table(w.pmd(p.mm, region))) for region in w.regions()]
    vm0 = dict(m.vmstat)
    n_events = len(m.collapse_events())

    m.khugepaged.do_scan()

    expected, events, rss, swp = {}, {}, rss0, swp0
    for r, region in enumerate(w.regions()):
        pmd, ptes = before[r]
        out = hpage_collapse_scan_pmd(pmd, ptes, frames, cc)
        result, want_pmd = out.result, pmd
        if out.event:
            events[out.event] = events.get(out.event, 0) + 1
        if result == ScanResult.SCAN_SUCCEED:
            got = p.mm.get_pmd(region)
            assert got & 3 == _engine.PY_PMD_KIND_HUGE
            col = collapse_huge_page(pmd, ptes, frames, cc, out.unmapped, swap, vma_write=True,
                                     new_head=((got >> 5) & 0x7FFFFFF) << 9)
            result, want_pmd = col.result, col.pmd
            event(f"khugepaged collapse, {'with' if col.swapped_in else 'no'} swap-in")
            if any(order for _, order in col.freed):
                event("khugepaged collapse freed a PTE-mapped THP")
            rss += col.anon_rss_delta
            swp += col.swap_ents_delta
        expected[region] = (result, out if pmd and pmd & 3 == 1 else None)
        assert w.pmd(p.mm, region) == want_pmd, hex(region)
        assert w.table(want_pmd) == ptes
    new = m.collapse_events()[n_events:]
    check_events(new[new["pid"] == p.pid], expected)
    same_frames(m, frames)
    assert (p.mm.anon_rss, p.mm.swap_ents) == (rss, swp)
    assert m.page_tables.swap_used == used0 - len(swap.slots_freed)
    for name in ("thp_scan_exceed_none_pte", "thp_scan_exceed_swap_pte", "thp_scan_exceed_share_pte"):
        assert m.vmstat[name] - vm0[name] == events.get(name, 0), name
    collapsed = sum(1 for res, _ in expected.values() if res == ScanResult.SCAN_SUCCEED)
    assert m.vmstat["thp_collapse_alloc"] - vm0["thp_collapse_alloc"] == collapsed
    assert p.read(w.a, N * HPAGE).tolist() == w.shadow[p.pid]
    m.check()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenario)
def test_madv_collapse_matches_reference(sc):
    """MADV_COLLAPSE of each parent region in turn (the engine's collapse_run, or, with swap
    entries, the Python swap-in path and collapse_copy): result, errno, counters and the state
    left behind match the reference's scan + collapse_huge_page() without limits."""
    w = World(sc)
    m, p = w.m, w.p
    _, cc = w.controls()
    for region in w.regions():
        frames, swap, rss0, swp0, used0 = w.snapshot()
        pmd = w.pmd(p.mm, region)
        ptes = w.table(pmd)
        out = hpage_collapse_scan_pmd(pmd, ptes, frames, cc)
        n_events = len(m.collapse_events())
        try:
            p.madvise(region, HPAGE, MADV_COLLAPSE)
            err = 0
        except OSError as e:
            err = e.errno
        result, want_pmd, rss, swp = out.result, pmd, rss0, swp0
        if result == ScanResult.SCAN_SUCCEED:
            got = p.mm.get_pmd(region)
            col = collapse_huge_page(pmd, ptes, frames, cc, out.unmapped, swap, vma_write=True,
                                     new_head=((got >> 5) & 0x7FFFFFF) << 9)
            result, want_pmd = col.result, col.pmd
            event(f"MADV_COLLAPSE, {'with' if col.swapped_in else 'no'} swap-in, "
                  f"{'shared' if out.shared else 'exclusive'}")
            if any(order for _, order in col.freed):
                event("MADV_COLLAPSE freed a PTE-mapped THP")
            rss, swp = rss0 + col.anon_rss_delta, swp0 + col.swap_ents_delta
        ok = result in (ScanResult.SCAN_SUCCEED, ScanResult.SCAN_PMD_MAPPED)
        assert err == (0 if ok else sim.madvise_collapse_errno(sim.ScanResult(int(result))))
        new = m.collapse_events()[n_events:]
        check_events(new, {region: (result, out if pmd and pmd & 3 == 1 else None)})
        assert w.pmd(p.mm, region) == want_pmd
        assert w.table(w.pmd(p.mm, region)) == ptes
        same_frames(m, frames)
        assert (p.mm.anon_rss, p.mm.swap_ents) == (rss, swp)
        assert m.page_tables.swap_used == used0 - len(swap.slots_freed)
    assert p.read(w.a, N * HPAGE).tolist() == w.shadow[p.pid]
    m.check()


def _disjoint_thp_world():
    m = thpcore.Machine("128M", seed=0)
    p = m.spawn()
    a = p.mmap(HPAGE)
    p.write(a, HPAGE, value=7)
    p.madvise(a, HPAGE, MADV_COLLAPSE)
    c = p.fork()
    p.madvise(a, HPAGE // 2, MADV_DONTNEED)           # the parent keeps the second half
    c.madvise(a + HPAGE // 2, HPAGE // 2, MADV_DONTNEED)   # the child keeps the first half
    return m, p, c, a


def test_reference_calls_mm_shared_thp_shared():
    """A THP mapped into two mms, each mapping half of it (no page mapped twice): 6.18's
    folio_maybe_mapped_shared() says "shared" (the MM_ID tracking), so khugepaged with
    max_ptes_shared below 256 gives up on the parent's region."""
    m, p, c, a = _disjoint_thp_world()
    w = World.around(m, p, c, a)
    pmd = p.mm.get_pmd(a)
    out = hpage_collapse_scan_pmd(pmd, w.table(pmd), w.frames(), CollapseControl(True, 511, 64, 100))
    assert (out.result, out.shared) == (ScanResult.SCAN_EXCEED_SHARED_PTE, 101)
    with pytest.raises(ValueError, match="mm_count"):
        f = m.page_alloc.zone.frames()
        hpage_collapse_scan_pmd(pmd, w.table(pmd), Frames(f["flags"], f["order"], f["mapcount"],
                                                          f["content"]), CollapseControl(True))


def test_engine_counts_mm_shared_thp():
    """A THP PTE-mapped into two mms, no page mapped twice: shared for 6.18 (CONFIG_MM_ID)."""
    m, p, c, a = _disjoint_thp_world()
    code, counts = m.page_tables.scan_pmd(p.mm.get_pmd(a) >> 32, True, 511, 64, 100, False)
    assert (sim.ScanResult(code), counts["shared"]) == (sim.ScanResult.SCAN_EXCEED_SHARED_PTE, 101)


def test_bench_functions_run():
    assert ref.bench_scan(4, rounds=1) > 0
    assert ref.bench_collapse(2, rounds=1) > 0
    assert ref.bench_collapse(2, rounds=1, with_allocator=False) > 0
