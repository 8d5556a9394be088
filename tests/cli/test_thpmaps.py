"""thpcore.cli.thpmaps (the kernel's tools/mm/thpmaps as a library): simulated processes, synthetic
page layouts checked against an independent page-by-page model of the script's rules, the
output format, and a live child process checked against its own /proc/PID/smaps."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import thpcore
from thpcore import (MADV_DONTNEED, MADV_HUGEPAGE, PROT_READ, PROT_WRITE)
from thpcore.cli import thpmaps as T
from thpcore.mm.huge_memory import deferred_split_scan

HP = 2 << 20
PAGE = 4096
NO = T.NO_PFN
ANON, HEAD, TAIL, THP, ZERO = (1 << 12), (1 << 15), (1 << 16), (1 << 22), (1 << 24)
PMD_KEY = "anon-thp-pmd-aligned-2048kB"
PTE2M_KEY = "anon-thp-pte-aligned-2048kB"
PARTIAL_KEY = "anon-thp-pte-partial"


# ------------------------------------------------------------------------------------ helpers

def thp_process(n_thps=4):
    """A 1 GiB machine (THP "madvise") and a process with n PMD-mapped THPs in one VMA."""
    m = thpcore.Machine(memory="1G", seed=0)
    p = m.spawn()
    a = p.mmap(n_thps * HP)
    assert a % HP == 0
    p.madvise(a, n_thps * HP, MADV_HUGEPAGE)
    p.write(a, n_thps * HP)
    return m, p, a


def sim_stats(m, p, a=None, **kw):
    """{label: kB} of the VMA starting at a (or the rollup)."""
    rep = T.classify(T.gather_sim(m, p.pid), rollup=a is None, **kw)
    return rep.stats(a)


def smaps_of(p, a):
    [ent] = [e for e in p.smaps() if e["start"] == a]
    return ent


def nonzero(stats):
    return {k: v for k, v in stats.items() if v}


# ----------------------------------------------------------------------- simulated processes

def test_pmd_mapped_thps_match_anon_huge_pages():
    m, p, a = thp_process(4)
    ent = smaps_of(p, a)
    assert ent["AnonHugePages"] == 8192
    st = sim_stats(m, p, a)
    assert st[PMD_KEY] == ent["AnonHugePages"] == 8192
    # the 4 THPs are found in pagemap/kpageflags as aligned 2 MiB folios, all of which the
    # PMD counter (AnonHugePages) takes out of the PTE counter
    assert nonzero(st) == {PMD_KEY: 8192}
    # ... which is visible when smaps does not say they are PMD-mapped
    recs = T.gather_sim(m, p.pid)
    for r in recs:
        r.smaps = {k: v for k, v in r.smaps.items() if k != "AnonHugePages"}
    st2 = T.classify(recs).stats(a)
    assert nonzero(st2) == {PTE2M_KEY: 8192}
    # and a second process's THPs are its own
    q = m.spawn()
    b = q.mmap(2 * HP)
    q.madvise(b, 2 * HP, MADV_HUGEPAGE)
    q.write(b, 2 * HP)
    assert nonzero(sim_stats(m, q, b)) == {PMD_KEY: 4096}
    assert sim_stats(m, p, a)[PMD_KEY] == 8192


def test_one_page_zapped_is_partial_until_the_deferred_split():
    m, p, a = thp_process(4)
    p.madvise(a + HP + 100 * PAGE, PAGE, MADV_DONTNEED)   # PMD split, 511 pages stay mapped
    assert smaps_of(p, a)["AnonHugePages"] == 6144
    st = sim_stats(m, p, a, cont_sizes=["64K"])
    # 0..99 and 101..511 of the folio: no whole folio, 511 partial pages
    assert nonzero(st) == {
        PMD_KEY: 6144, PARTIAL_KEY: 511 * 4,
        "anon-cont-pmd-aligned-64kB": 6144,
        # 16-page blocks: 6 in pages 0..95, 25 in 112..511 (96..111 holds the hole)
        "anon-cont-pte-aligned-64kB": (6 + 25) * 64,
    }
    assert m.deferred_split                                  # queued as partially mapped
    deferred_split_scan(m, 1 << 20)
    st = sim_stats(m, p, a, cont_sizes=["64K"])
    # split into order-0 pages: no longer THP pages at all
    assert nonzero(st) == {PMD_KEY: 6144, "anon-cont-pmd-aligned-64kB": 6144}
    assert smaps_of(p, a)["Rss"] == 8192 - 4


def test_fully_pte_mapped_thp_after_a_pmd_split():
    m, p, a = thp_process(4)
    # an mprotect round trip on one page: the PMD is split, the VMAs merge back, and the
    # THP stays whole and mapped by 512 PTEs
    p.mprotect(a + 2 * HP + PAGE, PAGE, PROT_READ)
    p.mprotect(a + 2 * HP + PAGE, PAGE, PROT_READ | PROT_WRITE)
    assert [(v.start, v.end) for v in p.mm.vmas] == [(a, a + 4 * HP)]
    assert not any(m.deferred_split.values())              # not partially mapped
    st = sim_stats(m, p, a, cont_sizes=["64K", "2M", "8K"])
    assert nonzero(st) == {
        PMD_KEY: 6144, PTE2M_KEY: 2048,
        "anon-cont-pmd-aligned-64kB": 6144, "anon-cont-pte-aligned-64kB": 2048,
        "anon-cont-pmd-aligned-2048kB": 6144, "anon-cont-pte-aligned-2048kB": 2048,
        "anon-cont-pmd-aligned-8kB": 6144, "anon-cont-pte-aligned-8kB": 2048,
    }


def test_cow_after_fork_splits_only_the_childs_pmd():
    m, p, a = thp_process(4)
    c = p.fork()
    c.write(a + 3 * HP + 7 * PAGE, PAGE)
    # child: 511 PTEs of the shared THP and one new order-0 page
    assert nonzero(sim_stats(m, c, a)) == {PMD_KEY: 6144, PARTIAL_KEY: 511 * 4}
    assert smaps_of(c, a)["AnonHugePages"] == 6144
    assert nonzero(sim_stats(m, p, a)) == {PMD_KEY: 8192}


def test_huge_zero_pmd_is_a_file_thp():
    """The huge zero folio is compound and KPF_THP but not anon, and no smaps PMD counter
    covers it: the script counts it as a PTE-mapped file THP (the live kernel agrees, see
    test_live_child_matches_its_smaps)."""
    m = thpcore.Machine(memory="1G", seed=0)
    p = m.spawn()
    a = p.mmap(2 * HP)
    p.madvise(a, 2 * HP, MADV_HUGEPAGE)
    p.read(a, PAGE)
    p.write(a + HP, HP)
    assert m.huge_zero_pfn is not None
    assert nonzero(sim_stats(m, p, a)) == {PMD_KEY: 2048, "file-thp-pte-aligned-2048kB": 2048}
    words = T.sim_kpageflags(m)[m.huge_zero_pfn:m.huge_zero_pfn + 3]
    assert [int(w) & (HEAD | TAIL | THP | ZERO | ANON) for w in words] == \
        [HEAD | THP | ZERO, TAIL | THP | ZERO, TAIL | THP | ZERO]


def test_sim_kpageflags_agree_with_task_mmu():
    from thpcore.proc.task_mmu import kpageflags, pagemap
    m, p, a = thp_process(2)
    b = p.mmap(HP)
    p.write(b, 64 * PAGE)                                   # order-0 pages
    table = T.sim_kpageflags(m)
    for v in p.mm.vmas:
        pm = pagemap(m, p.mm, v.start, v.end)
        pfns = (pm[(pm >> np.uint64(63)) == 1] & np.uint64((1 << 55) - 1)).astype(np.int64)
        assert pfns.size
        mask = np.uint64(ANON | HEAD | TAIL | THP | ZERO)
        assert np.array_equal(table[pfns] & mask, kpageflags(m, pfns)[0] & mask)


def test_rollup_sums_vmas_and_processes():
    m, p, a = thp_process(4)
    p.madvise(a + HP + 5 * PAGE, PAGE, MADV_DONTNEED)
    b = p.mmap(HP, prot=PROT_READ | PROT_WRITE)
    p.write(b, 32 * PAGE)
    q = m.spawn()
    c = q.mmap(2 * HP)
    q.madvise(c, 2 * HP, MADV_HUGEPAGE)
    q.write(c, 2 * HP)
    recs = T.gather_sim(m, p.pid) + T.gather_sim(m, q.pid)
    per = T.classify(recs, cont_sizes=["64K"], inc_smaps=True)
    roll = T.classify(recs, cont_sizes=["64K"], inc_smaps=True, rollup=True)
    summed = {}
    for vs in per.vmas:
        for k, (_, v) in vs.stats.items():
            summed[k] = summed.get(k, 0) + v
    assert roll.stats() == summed
    assert roll.stats()[PMD_KEY] == 6144 + 4096
    assert roll.stats()[PARTIAL_KEY] == 511 * 4
    # 16-page blocks of the cut THP: 31 (16..511; 0..15 holds the hole); order-0 pages: none
    assert roll.stats()["anon-cont-pte-aligned-64kB"] == 31 * 64
    # the smaps counters sum as smaps_rollup does
    for k in ("Rss", "Anonymous", "AnonHugePages", "Private_Dirty"):
        assert roll.stats()[k] == p.smaps_rollup()[k] + q.smaps_rollup()[k]
    assert roll.rollup_anon == roll.stats()["Anonymous"] == 8188 + 128 + 4096
    assert roll.rollup_file == 0
    # rollup output: just the statistics, percentages of the summed Anonymous (12412 kB)
    out = T.render(roll)
    assert not out.startswith("       PID")
    assert "anon-thp-pmd-aligned-2048kB:       10240 kB (83%)\n" in out
    assert "anon-thp-pte-partial:               2044 kB (16%)\n" in out
    assert "anon-cont-pte-aligned-64kB:         1984 kB (16%)\n" in out
    assert "Rss:                               12412 kB\n" in out


def test_rollup_cont_counts():
    m, p, a = thp_process(4)
    p.madvise(a + HP + 100 * PAGE, PAGE, MADV_DONTNEED)
    st = sim_stats(m, p, cont_sizes=["64K", "128K"])
    assert st["anon-cont-pte-aligned-64kB"] == 31 * 64
    # 32-page blocks: 3 in 0..95 (0..31, 32..63, 64..95), 12 in 128..511 (96..127 has 100)
    assert st["anon-cont-pte-aligned-128kB"] == 15 * 128
    assert st["anon-cont-pmd-aligned-128kB"] == 6144


# ---------------------------------------------------------------------------- --cont sizes

@pytest.mark.parametrize("size,order", [("8K", 1), ("16k", 2), ("64K", 4), (65536, 4),
                                        ("1M", 8), ("2M", 9), ("2m", 9), ("4096K", None)])
def test_cont_order(size, order):
    if order is None:
        with pytest.raises(T.ContSizeError):
            T.cont_order(size)
    else:
        assert T.cont_order(size) == order


@pytest.mark.parametrize("size,msg", [
    ("4K", "error: --cont value must be size of at least 2 pages"),
    ("3K", "error: --cont value must be size of at least 2 pages"),
    ("12K", "error: --cont value must be size of power-of-2 pages"),
    ("65537", "error: --cont value must be size of power-of-2 pages"),
    ("4M", "error: --cont value must be less than or equal to PMD order"),
    ("1G", "error: --cont value must be less than or equal to PMD order"),
    ("64KB", "error: --cont value must be integer size with optional KMG unit"),
    ("1.5M", "error: --cont value must be integer size with optional KMG unit"),
    ("K", "error: --cont value must be integer size with optional KMG unit"),
])
def test_cont_size_errors(size, msg):
    with pytest.raises(T.ContSizeError) as e:
        T.cont_order(size)
    assert str(e.value) == msg
    with pytest.raises(T.ContSizeError):
        T.classify([], cont_sizes=[size])


def test_cont_zero_size_fails_like_the_script():
    with pytest.raises(ValueError, match="math domain error"):
        T.cont_order("0")


def test_cont_order_other_geometry():
    # arm64 with 64K pages: PMD 512M, order 13; "64K" is one page
    assert T.cont_order("2M", page_size=65536, pmd_size=512 << 20) == 5
    with pytest.raises(T.ContSizeError, match="at least 2 pages"):
        T.cont_order("64K", page_size=65536, pmd_size=512 << 20)


needs_thp_sysfs = pytest.mark.skipif(
    not os.path.exists("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"),
    reason="main() reads the host's PMD size from sysfs")


@needs_thp_sysfs
def test_main_rejects_bad_cont(capsys):
    with pytest.raises(T.ContSizeError, match="power-of-2 pages"):
        T.main(["--cont", "12K"])
    out = capsys.readouterr().out
    assert out.startswith("usage: thpmaps ")


@needs_thp_sysfs
def test_module_prints_the_scripts_error():
    r = subprocess.run([sys.executable, "-m", "thpcore.cli.thpmaps", "--cont", "3K"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("usage: thpmaps ")
    assert lines[-1] == "thpmaps: error: --cont value must be size of at least 2 pages"


# ----------------------------------------------------------------------------- output format

def test_render_matches_the_script_format():
    m, p, a = thp_process(4)
    p.madvise(a + HP + 100 * PAGE, PAGE, MADV_DONTNEED)
    recs = T.gather_sim(m, p.pid)
    for r in recs:
        r.pid = 4242
    out = T.render(T.classify(recs))
    assert out == (
        "       PID             START              END PROT   OFFSET   DEV    INODE OBJECT\n"
        f"0000004242: {a:016x}-{a + 4 * HP:016x} rw-p 00000000 00:00 00000000 \n"
        "anon-thp-pmd-aligned-2048kB:        6144 kB (75%)\n"
        "anon-thp-pte-partial:               2044 kB (25%)\n"
    )
    full = T.render(T.classify(recs), inc_empty=True).splitlines()
    assert len(full) == 2 + 2 + 2 * 8 * 2 + 2        # header, vma, 2 pmd, 2x(8+8) pte, 2 partial
    assert full[3] == "file-thp-pmd-aligned-2048kB:           0 kB"       # no file: no percent
    assert full[4] == "anon-thp-pte-aligned-16kB:             0 kB ( 0%)"
    assert full[-1] == "file-thp-pte-partial:                  0 kB"
    assert T.render(T.classify(recs), header=False).startswith("0000004242: ")


def test_render_vma_line_fields():
    page = np.array([NO], dtype=np.uint64)
    recs = [
        T.VmaRecord(0x7f0000001000, 0x7f0000002000, pfns=page, perms="r-xp", pgoff=0x1a000,
                    major=0x103, minor=2, inode=26723, name="/usr/lib/libc.so.6", pid=7),
        T.VmaRecord(0x1000, 0x2000, pfns=page, perms="rw-s", inode=5,
                    name="/dev/shm/x (deleted)", pid=1234567890),
        T.VmaRecord(0x2000, 0x3000, pfns=page, perms="---p", name="[anon:a b]", pid=1),
        T.VmaRecord(0x3000, 0x4000, pfns=page, perms="rw-p", name="[heap]", pid=1),
    ]
    out = T.render(T.classify(recs)).splitlines()
    assert out[1:] == [
        "0000000007: 00007f0000001000-00007f0000002000 r-xp 0001a000 103:02 00026723 "
        "/usr/lib/libc.so.6",
        "1234567890: 0000000000001000-0000000000002000 rw-s 00000000 00:00 00000005 ",
        "0000000001: 0000000000002000-0000000000003000 ---p 00000000 00:00 00000000 ",
        "0000000001: 0000000000003000-0000000000004000 rw-p 00000000 00:00 00000000 [heap]",
    ]


def test_parse_smaps_and_inc_smaps():
    text = textwrap.dedent("""\
        7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
        Size:               4096 kB
        KernelPageSize:        4 kB
        MMUPageSize:           4 kB
        Rss:                4096 kB
        Pss:                4096 kB
        Anonymous:          3072 kB
        AnonHugePages:      2048 kB
        ShmemPmdMapped:        0 kB
        FilePmdMapped:         0 kB
        THPeligible:           1
        VmFlags: rd wr mr mw me ac hg
        7f0000400000-7f0000401000 r--p 00003000 fd:01 1234                       /usr/bin/x y
        Size:                  4 kB
        Rss:                   0 kB
        Anonymous:             0 kB
        AnonHugePages:         0 kB
        ShmemPmdMapped:        0 kB
        FilePmdMapped:         0 kB
        """)
    ents = T.parse_smaps(text)
    assert [(e["start"], e["end"], e["perms"], e["pgoff"], e["major"], e["minor"], e["inode"],
             e["name"]) for e in ents] == [
        (0x7f0000000000, 0x7f0000400000, "rw-p", 0, 0, 0, 0, ""),
        (0x7f0000400000, 0x7f0000401000, "r--p", 0x3000, 0xfd, 1, 1234, "/usr/bin/x y")]
    assert list(ents[0]["smaps"]) == ["Size", "Rss", "Pss", "Anonymous", "AnonHugePages",
                                      "ShmemPmdMapped", "FilePmdMapped"]
    recs = [T.VmaRecord(e["start"], e["end"], smaps=e["smaps"], perms=e["perms"],
                        name=e["name"], inode=e["inode"], pid=1) for e in ents]
    out = T.render(T.classify(recs, inc_smaps=True))
    assert "0000000001: 00007f0000400000-00007f0000401000 r--p 00000000 00:00 00001234 \n" in out
    # Rss 0: only the smaps counters, in file order, without KernelPageSize/MMUPageSize
    assert out.split("\n0000000001: 00007f0000400000")[1].splitlines()[1:] == [
        "Size:                                  4 kB"]
    first = out.splitlines()[2:6]
    assert first == ["Size:                               4096 kB",
                     "Rss:                                4096 kB",
                     "Pss:                                4096 kB",
                     "Anonymous:                          3072 kB"]
    # no pages given (pfns None): nothing is a THP, AnonHugePages is still reported
    assert "anon-thp-pmd-aligned-2048kB:        2048 kB (67%)\n" in out


# ------------------------------------------------- synthetic layouts against a page-by-page model

def model(vfn0, pfns, word, smaps, orders=()):
    """The script's rules applied page by page (written from its documented behaviour, no
    numpy tricks): returns {label: (type, kB)} in the script's order."""
    pages = [(vfn0 + i, int(p)) for i, p in enumerate(pfns) if p != NO]
    thp = [(v, p, word(p)) for v, p in pages if word(p) & THP]
    typ = ["anon" if f & ANON else "file" for _, _, f in thp]
    head = [bool(f & HEAD) for _, _, f in thp]
    ranges, s = [], 0
    for i in range(1, len(thp) + 1):
        if i == len(thp) or thp[i][0] != thp[i - 1][0] + 1 or thp[i][1] != thp[i - 1][1] + 1:
            ranges.append((s, i))
            s = i
    partial = {"anon": 0, "file": 0}
    whole = {}
    for s, e in ranges:
        hs = [i for i in range(s, e) if head[i]]
        if not hs:
            partial[typ[s]] += e - s
            continue
        partial[typ[s]] += hs[0] - s
        if word(thp[e - 1][1] + 1) & TAIL:
            last = hs.pop()
            partial[typ[last - 1]] += e - last              # typ[-1]: the VMA's last page
            e = last
        for j, h in enumerate(hs):
            n = (hs[j + 1] if j + 1 < len(hs) else e) - h
            order = n.bit_length() - 1
            if order > 9:
                raise IndexError("list index out of range")
            al = "aligned" if thp[h][0] % (1 << order) == 0 else "unaligned"
            key = (typ[h], al, order)
            whole[key] = whole.get(key, 0) + (1 << order)
    anon_pmd = smaps["AnonHugePages"]
    file_pmd = smaps["ShmemPmdMapped"] + smaps["FilePmdMapped"]
    for t, pmd in (("anon", anon_pmd), ("file", file_pmd)):
        whole[t, "aligned", 9] = max(0, whole.get((t, "aligned", 9), 0) - pmd // 4)
    out = {PMD_KEY: ("anon", anon_pmd), "file-thp-pmd-aligned-2048kB": ("file", file_pmd)}
    for t in ("anon", "file"):
        for al in ("aligned", "unaligned"):
            for o in range(2, 10):
                out[f"{t}-thp-pte-{al}-{4 << o}kB"] = (t, 4 * whole.get((t, al, o), 0))
        out[f"{t}-thp-pte-partial"] = (t, 4 * partial[t])
    for o in orders:
        nr = 1 << o
        cnt = {"anon": 0, "file": 0}
        for s, e in ranges:
            if (thp[s][0] - thp[s][1]) % nr:
                continue
            i = s + (-thp[s][0]) % nr
            while i + nr <= e:
                if not any(head[i + 1:i + nr]):
                    cnt[typ[i]] += nr
                i += nr
        kb = 4 * nr
        out[f"anon-cont-pmd-aligned-{kb}kB"] = ("anon", anon_pmd)
        out[f"file-cont-pmd-aligned-{kb}kB"] = ("file", file_pmd)
        out[f"anon-cont-pte-aligned-{kb}kB"] = ("anon", 4 * max(0, cnt["anon"] - anon_pmd // 4))
        out[f"file-cont-pte-aligned-{kb}kB"] = ("file", 4 * max(0, cnt["file"] - file_pmd // 4))
    return out


def memory(rng, nframes=1 << 14):
    """kpageflags of a physical memory cut into naturally aligned folios of random order."""
    flags = np.zeros(nframes, dtype=np.uint64)
    orders = np.zeros(nframes, dtype=np.int64)
    p = 0
    while p < nframes:
        o = int(rng.choice([0, 0, 0, 1, 2, 3, 4, 5, 9, 9]))
        while p % (1 << o) or p + (1 << o) > nframes:
            o -= 1
        w = ANON if rng.random() < 0.7 else 0
        if o:
            thp = THP if rng.random() < 0.95 else 0
            flags[p] = w | HEAD | thp
            flags[p + 1:p + (1 << o)] = w | TAIL | thp
        else:
            flags[p] = w | (THP if rng.random() < 0.02 else 0)
        orders[p] = o
        p += 1 << o
    return flags, orders


def layout(rng, flags, orders, npages):
    """(vfn0, pfn of each page or NO, page offsets of PMD-mapped THPs) of a random VMA: holes,
    scattered pages, PMD mappings of order-9 folios, and runs of contiguous pfns starting
    anywhere or on a head (at the vfn's alignment or not), some carrying on after a hole."""
    F = flags.size
    heads = np.flatnonzero((flags & np.uint64(HEAD)) != 0)
    heads9 = heads[orders[heads] == 9]
    pfns = np.full(npages, NO, dtype=np.uint64)
    pmd = []
    vfn0 = int(rng.integers(1 << 16, 1 << 20))
    if rng.random() < 0.5:
        vfn0 &= ~511
    i = 0
    while i < npages:
        r = rng.random()
        n = min(int(rng.integers(1, 700)), npages - i)
        if r < 0.15:
            i += n
        elif r < 0.3 and heads9.size and i + (-(vfn0 + i)) % 512 + 512 <= npages:
            i += (-(vfn0 + i)) % 512                    # a hole up to a PMD boundary
            h = int(rng.choice(heads9))
            pfns[i:i + 512] = np.arange(h, h + 512, dtype=np.uint64)
            pmd.append(i)
            i += 512
        elif r < 0.4:
            pfns[i:i + n] = rng.integers(0, F, n).astype(np.uint64)
            i += n
        else:
            if r < 0.7:
                s = int(rng.choice(heads))
                if rng.random() < 0.5:
                    s = min(F - 1, s - s % 512 + (vfn0 + i) % 512)
            else:
                s = int(rng.integers(0, F))
            n = min(n, F - s)
            pfns[i:i + n] = np.arange(s, s + n, dtype=np.uint64)
            i += n
            if rng.random() < 0.3 and i + 10 < npages and s + n + 5 < F:
                k = int(rng.integers(1, 4))             # a virtual hole, pfns carry on
                pfns[i + k:i + k + 5] = np.arange(s + n, s + n + 5, dtype=np.uint64)
                i += k + 5
        if rng.random() < 0.05:
            i += 1
    return vfn0, pfns, pmd


def random_case(seed, npages=2500):
    rng = np.random.default_rng(seed)
    flags, orders = memory(rng)
    vfn0, pfns, pmd = layout(rng, flags, orders, npages)
    present = pfns != NO
    rss = 4 * int(present.sum())
    smaps = {"Rss": rss, "Anonymous": int(rng.integers(0, rss + 1)),
             "AnonHugePages": 2048 * int(rng.integers(0, len(pmd) + 2)),
             "ShmemPmdMapped": 2048 * int(rng.integers(0, 2)), "FilePmdMapped": 0}
    conts = [int(o) for o in rng.choice([1, 2, 4, 9], size=2, replace=False)]
    return flags, vfn0, pfns, pmd, smaps, conts


def word_of(flags):
    return lambda p: int(flags[p]) if p < flags.size else 0


def word_array(flags, q):
    q = np.asarray(q, dtype=np.uint64)
    inside = q < np.uint64(flags.size)
    return np.where(inside, flags[np.where(inside, q, 0).astype(np.int64)], 0)


def stats_of(rec, conts):
    return T.classify([rec], cont_sizes=[PAGE << o for o in conts]).vmas[0].stats


@pytest.mark.parametrize("chunk", [None, 5])
def test_classify_matches_the_page_model(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(T, "_CHUNK", chunk)      # the vectorised code's chunk seams
    checked = set()
    for seed in range(25 if chunk is None else 8):
        flags, vfn0, pfns, pmd, smaps, conts = random_case(seed)
        want = model(vfn0, pfns, word_of(flags), smaps, conts)
        start, end = vfn0 * PAGE, (vfn0 + pfns.size) * PAGE
        present = np.flatnonzero(pfns != NO)
        table_flags = np.zeros(pfns.size, dtype=np.uint64)
        table_flags[present] = flags[pfns[present].astype(np.int64)]
        variants = {
            "table": T.VmaRecord(start, end, pfns=pfns, kpageflags=flags, smaps=smaps),
            "flags": T.VmaRecord(start, end, pfns=pfns, flags=table_flags, smaps=smaps,
                                 kpageflags=lambda q: word_array(flags, q)),
            "sparse": T.VmaRecord(start, end, pfns=pfns[present], index=present, smaps=smaps,
                                  kpageflags={k: int(v) for k, v in enumerate(flags) if v}),
        }
        for name, rec in variants.items():
            assert stats_of(rec, conts) == want, (seed, name)
        checked |= {k for k, (_, v) in want.items() if v}
    # the layouts exercise every kind of statistic
    assert chunk or {"anon-thp-pte-unaligned-64kB", "file-thp-pte-aligned-32kB", PARTIAL_KEY,
            "file-thp-pte-partial", PTE2M_KEY} <= checked


def test_hand_made_quirks():
    """Cases worked out by hand from the script's rules."""
    F = 1 << 12
    flags = np.zeros(F, dtype=np.uint64)

    def folio(p, order, anon=True):
        w = (ANON if anon else 0) | THP
        flags[p] = w | HEAD
        flags[p + 1:p + (1 << order)] = w | TAIL

    folio(64, 4)                      # 64..79 anon, 16 pages
    folio(96, 5, anon=False)          # 96..127 file, 32 pages
    folio(128, 4)                     # 128..143 anon
    smaps = {"Rss": 400, "Anonymous": 300, "AnonHugePages": 0, "ShmemPmdMapped": 0,
             "FilePmdMapped": 0}
    vfn0 = 0x10008                    # 8 pages past a 16-page boundary
    pfns = np.full(100, NO, dtype=np.uint64)
    pfns[0:16] = np.arange(64, 80)    # whole folio at an unaligned vfn
    pfns[24:40] = np.arange(128, 144)  # whole folio, vfn 0x10020: aligned
    pfns[50:70] = np.arange(96, 116)  # file folio head + 19 pages, then pfn 116 is a tail
    pfns[80:90] = np.arange(100, 110)  # tails only: partial, typed by the first page (file)
    rec = T.VmaRecord(vfn0 * PAGE, (vfn0 + 100) * PAGE, pfns=pfns, kpageflags=flags,
                      smaps=smaps)
    st = {k: v for k, (_, v) in stats_of(rec, [4]).items() if v}
    assert st == {
        "anon-thp-pte-unaligned-64kB": 64,
        "anon-thp-pte-aligned-64kB": 64,
        # the cut-off file folio is typed by the THP page before its head: anon
        PARTIAL_KEY: 20 * 4,
        "file-thp-pte-partial": 10 * 4,
        # 16-page blocks: only the aligned folio (the unaligned one has pfn % 16 != vfn % 16;
        # the file run 96.. at vfn 0x1003a is not congruent either)
        "anon-cont-pte-aligned-64kB": 64,
    }
    # AnonHugePages beyond what the pages show clamps the PTE counter at 0
    rec.smaps = {**smaps, "AnonHugePages": 4096}
    st = stats_of(rec, [])
    assert st[PMD_KEY] == ("anon", 4096) and st[PTE2M_KEY] == ("anon", 0)


def test_folio_larger_than_pmd_fails_like_the_script():
    flags = np.zeros(2048, dtype=np.uint64)
    flags[0] = ANON | THP | HEAD
    flags[1:1024] = ANON | THP | TAIL               # a 1024-page "THP"
    pfns = np.arange(1024, dtype=np.uint64)
    rec = T.VmaRecord(1 << 30, (1 << 30) + 1024 * PAGE, pfns=pfns, kpageflags=flags)
    with pytest.raises(IndexError):
        T.classify([rec])


def write_pagemap(path, vfn0, pfns):
    pm = np.zeros(pfns.size, dtype=np.uint64)
    present = pfns != NO
    pm[present] = pfns[present] | np.uint64(T.PM_PRESENT)
    with open(path, "wb") as f:
        f.seek(vfn0 * 8)
        f.write(pm.tobytes())


def test_live_reader_on_synthetic_files(tmp_path, monkeypatch):
    """gather_live's pagemap/kpageflags reader (its PMD shortcut and its runs of pfns read
    with the frame after them) on files laid out like /proc/PID/pagemap and /proc/kpageflags,
    with PAGEMAP_SCAN answered from the layout, or unavailable."""
    for seed in range(12):
        flags, vfn0, pfns, pmd, smaps, conts = random_case(100 + seed)
        want = model(vfn0, pfns, word_of(flags), smaps, conts)
        write_pagemap(tmp_path / "pagemap", vfn0, pfns)
        (tmp_path / "kpageflags").write_bytes(flags.tobytes() + bytes(64))
        pmd_set = set(pmd)

        def scan(fd, start, end, vec):
            rows, i, n = [], 0, pfns.size
            while i < n:
                if pfns[i] == NO:
                    i += 1
                elif i in pmd_set:
                    rows.append([(vfn0 + i) * PAGE, (vfn0 + i + 512) * PAGE,
                                 T.PAGE_IS_PRESENT | T.PAGE_IS_HUGE])
                    i += 512
                else:
                    j = i
                    while j < n and pfns[j] != NO and j not in pmd_set:
                        j += 1
                    rows.append([(vfn0 + i) * PAGE, (vfn0 + j) * PAGE, T.PAGE_IS_PRESENT])
                    i = j
            return np.array(rows, dtype=np.uint64).reshape(-1, 3)

        monkeypatch.setattr(T, "_pagemap_scan", scan)
        pfd = os.open(tmp_path / "pagemap", os.O_RDONLY)
        kfd = os.open(tmp_path / "kpageflags", os.O_RDONLY)
        try:
            for use_scan in (True, False):
                got = T._read_vma_pages(pfd, kfd, vfn0 * PAGE, (vfn0 + pfns.size) * PAGE,
                                        np.zeros((16, 3), dtype=np.uint64), [use_scan])
                p, f, idx, extra = got
                rec = T.VmaRecord(vfn0 * PAGE, (vfn0 + pfns.size) * PAGE, pfns=p, flags=f,
                                  index=idx, kpageflags=extra, smaps=smaps)
                assert stats_of(rec, conts) == want, (seed, use_scan)
        finally:
            os.close(pfd)
            os.close(kfd)


def test_gather_live_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionError, match="root"):
        T.gather_live(os.getpid())


# ------------------------------------------------------------------------------- live kernel

CHILD = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
HP, PAGE = 2 << 20, 4096

def region(n):
    raw = libc.mmap(None, (n + 1) * HP, 3, 0x22, -1, 0)      # PROT_RW, MAP_PRIVATE|ANON
    assert raw not in (None, ctypes.c_void_p(-1).value)
    a = (raw + HP - 1) & ~(HP - 1)
    assert libc.madvise(a, n * HP, 14) == 0                 # MADV_HUGEPAGE
    return a

a = region(4)
ctypes.memset(a, 1, 4 * HP)
assert libc.mprotect(a + HP + PAGE, PAGE, 1) == 0           # THP 1: PMD split, stays whole
assert libc.mprotect(a + HP + PAGE, PAGE, 3) == 0
assert libc.madvise(a + 2 * HP + 100 * PAGE, PAGE, 4) == 0  # THP 2: one page zapped
b = region(2)
ctypes.c_char.from_address(b).value                         # huge zero page (read fault)
ctypes.memset(b + HP, 2, HP)
# keep khugepaged away while the test looks (existing mappings stay as they are)
assert libc.madvise(a, 4 * HP, 15) == 0 and libc.madvise(b, 2 * HP, 15) == 0  # NOHUGEPAGE
print(a, b, flush=True)
sys.stdin.read()
"""


def _smaps_sum(pid, lo, hi, key):
    total, cur = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0]:
                s, e = (int(x, 16) for x in parts[0].split("-"))
                cur = s < hi and e > lo
            elif cur and parts[0] == key + ":":
                total += int(parts[1])
    return total


def _naive_live_stats(pid, lo, hi, **kw):
    """thpmaps' rollup of the VMAs in [lo, hi), every page read straight from pagemap and
    kpageflags, one pread per page."""
    kfd = os.open("/proc/kpageflags", os.O_RDONLY)
    pfd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)

    def kpf(q):
        q = np.asarray(q, dtype=np.uint64)
        res = np.zeros(q.shape, dtype=np.uint64)
        for i, p in enumerate(q.tolist()):
            b = os.pread(kfd, 8, p * 8)
            res[i] = int.from_bytes(b, sys.byteorder) if len(b) == 8 else 0
        return res

    try:
        with open(f"/proc/{pid}/smaps") as f:
            ents = T.parse_smaps(f.read())
        recs = []
        for e in ents:
            if not (e["start"] < hi and e["end"] > lo):
                continue
            n = (e["end"] - e["start"]) // PAGE
            pm = np.frombuffer(os.pread(pfd, 8 * n, e["start"] // PAGE * 8), dtype=np.uint64)
            pfns = np.where(pm >> np.uint64(63) == 1, pm & np.uint64(T.PM_PFN_MASK), NO)
            present = pfns != NO
            flags = np.zeros(n, dtype=np.uint64)
            flags[present] = kpf(pfns[present])
            recs.append(T.VmaRecord(e["start"], e["end"], pfns=pfns, flags=flags,
                                    kpageflags=kpf, smaps=e["smaps"], perms=e["perms"],
                                    pid=pid))
        return T.classify(recs, rollup=True, **kw).stats()
    finally:
        os.close(pfd)
        os.close(kfd)


@pytest.fixture
def live_child():
    if os.geteuid() != 0:
        pytest.skip("thpmaps needs root (pfns in pagemap, /proc/kpageflags)")
    try:
        os.close(os.open("/proc/kpageflags", os.O_RDONLY))
    except OSError as e:
        pytest.skip(f"/proc/kpageflags unreadable: {e}")
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            enabled = f.read()
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            pmd_size = int(f.read())
    except OSError:
        pytest.skip("no transparent hugepages")
    if "[never]" in enabled or pmd_size != HP or os.sysconf("SC_PAGE_SIZE") != PAGE:
        pytest.skip("needs THP (madvise or always) with 4K pages and 2M PMDs")
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if not line:
            pytest.fail("the child process failed to set up its mappings")
        a, b = (int(x) for x in line.split())
        yield child.pid, a, b
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def test_live_child_matches_its_smaps(live_child, capsys):
    pid, a, b = live_child
    lo, hi = a, a + 4 * HP
    ahp = _smaps_sum(pid, lo, hi, "AnonHugePages")
    if ahp != 4096:
        pytest.skip(f"the kernel gave the child {ahp} kB of PMD-mapped THPs, not 4096")
    recs = T.gather_live(pid, span=(lo, hi))
    roll = T.classify(recs, rollup=True, cont_sizes=["64K"])
    st = roll.stats()
    assert st[PMD_KEY] == ahp == 4096
    assert st[PTE2M_KEY] == 2048                            # the mprotect-split THP
    assert st[PARTIAL_KEY] == 511 * 4                       # the THP with a page zapped
    assert st["anon-cont-pte-aligned-64kB"] == 2048 + 31 * 64
    assert roll.rollup_anon == _smaps_sum(pid, lo, hi, "Anonymous") == 4 * 2048 - 4
    # the fast reader (PAGEMAP_SCAN, one kpageflags read per PMD) sees what a page-by-page
    # read of pagemap and kpageflags sees
    assert _naive_live_stats(pid, lo, hi, cont_sizes=["64K"]) == st
    # huge zero page: compound, THP, not anon -> counted as a file THP mapped by PTEs
    st_b = T.classify(T.gather_live(pid, span=(b, b + 2 * HP)), rollup=True).stats()
    if _smaps_sum(pid, b, b + 2 * HP, "AnonHugePages") == 2048:
        with open("/sys/kernel/mm/transparent_hugepage/use_zero_page") as f:
            zero = f.read().strip() == "1"
        assert st_b[PMD_KEY] == 2048
        assert st_b["file-thp-pte-aligned-2048kB"] == (2048 if zero else 0)
    # the command line on the whole child prints what the library renders
    want = T.render(T.classify(T.gather_live(pid), rollup=True, cont_sizes=["64K"]))
    capsys.readouterr()
    assert T.main(["--pid", str(pid), "--rollup", "--cont", "64K"]) == 0
    assert capsys.readouterr().out == want
    assert f"{PMD_KEY}:" in want


def test_live_gather_without_pagemap_scan(live_child, monkeypatch):
    pid, a, b = live_child
    fast = T.classify(T.gather_live(pid), cont_sizes=["64K", "2M"])
    monkeypatch.setattr(T, "_pagemap_scan", lambda *args: None)
    slow = T.classify(T.gather_live(pid), cont_sizes=["64K", "2M"])
    assert [(v.vma.start, v.stats) for v in fast.vmas] == \
        [(v.vma.start, v.stats) for v in slow.vmas]
    assert any(v.stats.get(PMD_KEY) for v in fast.vmas)
