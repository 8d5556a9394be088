"""Workload generators: each sets up a process's memory, acts on it as time passes, and yields
an access stream for the TLB model. Kinds: sequential, random (GUPS-like), zipf (hot/cold),
churn (allocator: free with MADV_DONTNEED, reuse, MADV_COLLAPSE as tcmalloc/jemalloc do), redis
(insert/delete churn plus a forked snapshot writing under COW), realloc (a growing buffer moved
by mremap, as glibc's realloc does for large chunks), services (many small tasks).
The fragmenter (unmovable kernel allocations, scattered or packed) lives in fragment()."""

from __future__ import annotations

import numpy as np

import thpcore._engine as _engine
from thpcore.constants import MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE, MREMAP_MAYMOVE
from thpcore.units import parse_size

HP = 2 << 20
PAGE = 4096


class Workload:
    kind = "workload"

    def __init__(self, m, proc, size="64M", populate=1.0, hugepage=False, **params):
        self.m, self.p = m, proc
        self.size = parse_size(size) // HP * HP
        if self.size <= 0:
            raise ValueError(f"{self.kind}: size must be at least 2M")
        if not 0 < populate <= 1:
            raise ValueError(f"{self.kind}: populate must be in (0, 1]")
        self.populate = populate
        if hugepage not in (True, False, "after"):
            raise ValueError(f"{self.kind}: hugepage must be true, false or \"after\"")
        self.hugepage = hugepage
        unknown = set(params) - set(self.PARAMS)
        if unknown:
            raise ValueError(f"{self.kind}: unknown parameters {sorted(unknown)}")
        self.params = {**self.PARAMS, **params}
        self.rng = np.random.default_rng(m.seed * 1000003 + proc.pid)
        self.addr = 0

    PARAMS: dict = {}

    @property
    def regions(self) -> int:
        return self.size // HP

    def setup(self) -> None:
        self.addr = self.p.mmap(self.size)
        if self.hugepage is True:
            self.p.madvise(self.addr, self.size, MADV_HUGEPAGE)
        pages = int(512 * self.populate)
        if pages == 512:
            self.p.write(self.addr, self.size)
        else:
            for i in range(self.regions):
                self.p.write(self.addr + i * HP, pages * PAGE)
        if self.hugepage == "after":
            # Advised once the heap is built (a JVM or allocator growing first): the memory is
            # small pages until khugepaged or a MADV_COLLAPSE gets to it.
            self.p.madvise(self.addr, self.size, MADV_HUGEPAGE)

    def tick(self, seconds: float) -> None:
        pass

    def access_stream(self, n: int) -> np.ndarray:
        """Virtual page numbers of n accesses (uniform over the populated pages by default)."""
        pages = int(512 * self.populate)
        idx = self.rng.integers(0, pages, n) + self.rng.integers(0, self.regions, n) * 512
        return (self.addr >> 12) + idx.astype(np.int64)


class Sequential(Workload):
    kind = "sequential"

    def tick(self, seconds):
        self.p.read(self.addr, self.size)

    def access_stream(self, n):
        pages = self.size // PAGE
        return (self.addr >> 12) + (np.arange(n, dtype=np.int64) % pages)


class Random(Workload):
    """GUPS-like: random updates all over the table."""
    kind = "random"
    PARAMS = {"updates_per_tick": 4096}

    def tick(self, seconds):
        k = self.params["updates_per_tick"]
        regions = self.rng.integers(0, self.regions, max(1, k // 512))
        for r in np.unique(regions):
            self.p.write(self.addr + int(r) * HP, int(512 * self.populate) * PAGE)


class Zipf(Workload):
    """Hot/cold: regions are read with Zipf popularity; the hot ones are touched every tick."""
    kind = "zipf"
    PARAMS = {"alpha": 1.2, "hot_regions_per_tick": 64}

    def _popular(self, n):
        ranks = self.rng.zipf(self.params["alpha"], n)
        return (ranks - 1) % self.regions

    def tick(self, seconds):
        for r in np.unique(self._popular(self.params["hot_regions_per_tick"])):
            self.p.read(self.addr + int(r) * HP, int(512 * self.populate) * PAGE)

    def access_stream(self, n):
        pages = int(512 * self.populate)
        idx = self._popular(n) * 512 + self.rng.integers(0, pages, n)
        return (self.addr >> 12) + idx.astype(np.int64)


class Churn(Workload):
    """An allocator: frees random spans with MADV_DONTNEED, reuses them, and every few ticks
    collapses its fully populated regions with MADV_COLLAPSE (tcmalloc/jemalloc style)."""
    kind = "churn"
    PARAMS = {"free_fraction": 0.05, "span": "256K", "collapse_every": 5}

    def setup(self):
        super().setup()
        self.ticks = 0

    def tick(self, seconds):
        span = parse_size(self.params["span"])
        n = max(1, int(self.size / span * self.params["free_fraction"]))
        starts = self.rng.integers(0, self.size // span, n) * span
        for s in np.unique(starts):
            self.p.madvise(self.addr + int(s), span, MADV_DONTNEED)
        for s in np.unique(starts):
            self.p.write(self.addr + int(s), span)
        self.ticks += 1
        if self.params["collapse_every"] and self.ticks % self.params["collapse_every"] == 0:
            try:
                self.p.madvise(self.addr, self.size, MADV_COLLAPSE)
            except OSError:
                pass                       # EAGAIN/ENOMEM: an allocator just tries later


class Redis(Workload):
    """Insert/delete churn; every `snapshot_every` seconds a forked child writes a snapshot for
    `snapshot_seconds` while the parent keeps writing (copy-on-write, PMD splits)."""
    kind = "redis"
    PARAMS = {"writes_per_tick": 2048, "snapshot_every": 300, "snapshot_seconds": 20}

    def setup(self):
        super().setup()
        self.elapsed = 0.0
        self.child = None
        self.child_until = 0.0

    def tick(self, seconds):
        self.elapsed += seconds
        k = self.params["writes_per_tick"]
        for r in np.unique(self.rng.integers(0, self.regions, max(1, k // 64))):
            off = int(self.rng.integers(0, 512 - 64)) * PAGE
            self.p.write(self.addr + int(r) * HP + off, 64 * PAGE)
        if self.child is not None and self.elapsed >= self.child_until:
            if self.child.alive:
                self.child.exit()
            self.child = None
        if self.child is None and self.params["snapshot_every"] and \
                int(self.elapsed) % int(self.params["snapshot_every"]) < seconds:
            self.child = self.p.fork()
            self.child_until = self.elapsed + self.params["snapshot_seconds"]


class Realloc(Workload):
    """A buffer that grows by `growth` every tick with mremap(MREMAP_MAYMOVE), writing its new
    tail, until it reaches `size`; then it is freed and starts again at `start`. glibc's realloc
    does this for mmapped chunks, with lengths that are page multiples, not 2 MiB multiples: a
    move then lands on an address that is not 2 MiB aligned and every THP of the buffer is
    PMD-split (the kernel only moves a huge PMD whole between aligned addresses).
    `align_2m = true` rounds every length up to 2 MiB, as a THP-aware allocator would: the
    kernel's THP-aligned placement then keeps the huge PMDs across moves."""
    kind = "realloc"
    PARAMS = {"start": "4M", "growth": 1.5, "align_2m": False}

    def setup(self):
        if float(self.params["growth"]) <= 1:
            raise ValueError("realloc: growth must be more than 1")
        self.buf, self.length = 0, 0
        self.generations = 0
        self._new_buffer()

    def _round(self, n: int) -> int:
        unit = HP if self.params["align_2m"] else PAGE
        return -(-n // unit) * unit

    def _new_buffer(self):
        self.length = min(self._round(parse_size(self.params["start"])), self.size)
        self.buf = self.addr = self.p.mmap(self.length)
        if self.hugepage is True:
            self.p.madvise(self.buf, self.length, MADV_HUGEPAGE)
        self.p.write(self.buf, self.length)

    def tick(self, seconds):
        if self.length >= self.size:
            self.p.munmap(self.buf, self.length)
            self.generations += 1
            self._new_buffer()
            return
        new = min(self._round(int(self.length * float(self.params["growth"]))), self.size)
        self.buf = self.addr = self.p.mremap(self.buf, self.length, new, MREMAP_MAYMOVE)
        if self.hugepage is True:
            self.p.madvise(self.buf, new, MADV_HUGEPAGE)
        self.p.write(self.buf + self.length, new - self.length)
        self.length = new

    def access_stream(self, n):
        idx = self.rng.integers(0, self.length // PAGE, n)
        return (self.buf >> 12) + idx.astype(np.int64)


KINDS = {c.kind: c for c in (Sequential, Random, Zipf, Churn, Redis, Realloc)}


def make(kind: str, m, proc, **params) -> Workload:
    if kind not in KINDS:
        raise ValueError(f"unknown workload {kind!r}; one of {sorted(KINDS)}")
    return KINDS[kind](m, proc, **params)


FLEET_KEYS = {"tenants", "seed", "mix", "sizes", "priorities", "populate", "hugepage", "prefix"}


def fleet(spec: dict) -> list[dict]:
    """A multi-tenant fleet as [[process]] tables: `tenants` tasks whose workload kind is drawn
    from `mix` ({kind: weight}), size from `sizes` (a list), priority from `priorities` (a
    list) and populate fraction from `populate` (a list), all from their own seed, so the same
    table always gives the same fleet."""
    unknown = set(spec) - FLEET_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) in [fleet]: {sorted(unknown)}")
    mix = spec.get("mix", {"zipf": 1, "churn": 1, "redis": 1})
    bad = set(mix) - set(KINDS)
    if bad or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"[fleet] mix: weights over {sorted(KINDS)}, not all zero")
    tenants = int(spec.get("tenants", 10))
    if tenants <= 0:
        raise ValueError("[fleet] tenants must be positive")
    sizes = list(spec.get("sizes", ["64M", "256M"]))
    priorities = list(spec.get("priorities", [0]))
    populate = list(spec.get("populate", [1.0]))
    if not sizes or not priorities or not populate:
        raise ValueError("[fleet] sizes, priorities and populate must be non-empty lists")
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    kinds = sorted(mix)
    weights = np.array([mix[k] for k in kinds], dtype=np.float64)
    picks = rng.choice(len(kinds), tenants, p=weights / weights.sum())
    prefix = spec.get("prefix", "tenant")
    return [{"name": f"{prefix}{i}", "workload": kinds[int(picks[i])],
             "size": sizes[int(rng.integers(len(sizes)))],
             "priority": priorities[int(rng.integers(len(priorities)))],
             "populate": populate[int(rng.integers(len(populate)))],
             "hugepage": spec.get("hugepage", False)} for i in range(tenants)]


# A scattered fragment() of a freshly booted zone depends only on the zone's size, the
# arguments and the watermark scale: its result is kept (one entry), so the variants of a
# scenario and the jobs of a sweep in one worker build it once.
_FRAGMENTED: dict = {}


def fragment(m, fraction: float, pattern: str = "scattered") -> int:
    """Unmovable kernel memory (slab) amounting to `fraction` of the machine: "packed" as at
    boot, or "scattered" one page per pageblock, as slab grown under memory pressure ends up.
    Returns the pages allocated."""
    if pattern not in ("scattered", "packed"):
        raise ValueError("fragment pattern must be 'scattered' or 'packed'")
    n = int(m.nr_pages * fraction)
    if not n:
        return 0
    if pattern == "packed":
        return len(m.kernel_alloc_bulk(0, "unmovable", n))
    # Fill memory with movable pages, drain the unmovable lists, then let each unmovable page
    # steal a single free page inside a different movable pageblock; free the filler.
    pa = m.page_alloc
    saved_boost, saved_min = pa.watermark_boost_factor, pa.min_free_kbytes
    zone = pa.zone
    # Kept for zones up to 64 GiB (a copy is 12 bytes a page); larger ones are built each time.
    fresh = (zone.counters()["pgalloc"] == 0 and zone.nr_free_pages == zone.nr_pages
             and zone.nr_pages <= 1 << 24)
    key = (zone.nr_pages, n, pa.watermark_scale_factor)
    if fresh and key in _FRAGMENTED:
        state, got = _FRAGMENTED[key]
        zone.restore_state(state, verify=False)
        _restore_watermarks(pa, saved_boost, saved_min)
        return got
    pa.watermark_boost_factor = 0
    pa.min_free_kbytes = 128                  # memory really full while the slab grows
    pa.setup_per_zone_wmarks()
    filler = m.kernel_alloc_bulk(0, "movable", zone.nr_free_pages)
    for order in range(10, 0, -1):
        m.kernel_alloc_bulk(order, "movable", 1 << 24)
    # The first filler page of each pageblock, blocks ascending (np.unique's answer, no sort).
    first_of = np.full(zone.nr_pageblocks, filler.size, dtype=np.int64)
    np.minimum.at(first_of, filler >> 9, np.arange(filler.size, dtype=np.int64))
    blocks = np.flatnonzero(first_of < filler.size)
    first = first_of[blocks]
    step = max(1, blocks.size // max(n, 1))
    got = 0
    for i in range(0, blocks.size, step):
        if got >= n:
            break
        m.kernel_free(int(filler[first[i]]), 0)
        try:
            m.kernel_alloc(0, "unmovable")
            got += 1
        except OSError:
            break
    # Release everything movable again (the filler and the bulk blocks).
    f = zone.frames()
    movable_heads = np.nonzero(((f["flags"] & _engine.PY_PG_MOVABLE_OPS) != 0)
                               & ((f["flags"] & _engine.PY_PG_HEAD) != 0))[0]
    orders = f["order"][movable_heads].copy()           # the views change as blocks are freed
    for order in range(11):
        heads = movable_heads[orders == order]
        if heads.size:
            m.kernel_free_bulk(heads, order)
    if fresh:
        _FRAGMENTED.clear()
        _FRAGMENTED[key] = (zone.save_state(), got)
    _restore_watermarks(pa, saved_boost, saved_min)
    return got


def _restore_watermarks(pa, boost_factor: int, min_free_kbytes: int) -> None:
    pa.watermark_boost_factor = boost_factor
    pa.min_free_kbytes = min_free_kbytes
    pa.setup_per_zone_wmarks()
