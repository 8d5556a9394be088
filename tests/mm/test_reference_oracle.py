"""The Cython engine against the pure-Python reference allocator (thpcore.reference), which was
written independently from the kernel source: same operations, same pfns, same free lists."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thpcore import _engine
from thpcore.reference.page_alloc import ReferenceZone

FLAGS = [_engine.PY_PG_KERNEL, _engine.PY_PG_LRU, _engine.PY_PG_KERNEL | _engine.PY_PG_MOVABLE_OPS]
ALLOC_FLAGS = [_engine.PY_ALLOC_WMARK_MIN | _engine.PY_ALLOC_NOFRAGMENT,
               _engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT | _engine.PY_ALLOC_KSWAPD,
               _engine.PY_ALLOC_WMARK_MIN, _engine.PY_ALLOC_NO_WATERMARKS]

op = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 10), st.integers(0, 2), st.sampled_from(ALLOC_FLAGS),
              st.sampled_from(FLAGS), st.integers(1, 300)),
    st.tuples(st.just("free"), st.floats(0, 1), st.floats(0, 1)),
)


def same_state(eng, ref):
    assert np.array_equal(eng.free_area(), ref.free_area())
    assert np.array_equal(eng.pageblock_counts(), ref.pageblock_counts())
    assert eng.nr_free_pages == ref.nr_free_pages
    assert eng.watermark_boost == ref.watermark_boost
    assert (eng.pgalloc, eng.pgfree, eng.alloc_fallbacks) == (ref.pgalloc, ref.pgfree,
                                                              ref.alloc_fallbacks)
    for mt in range(5):
        for o in range(11):
            assert eng.free_list(mt, o) == ref.free_list(mt, o), (mt, o)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pageblocks=st.sampled_from([4, 8, 16]), wm=st.integers(0, 300),
       ops=st.lists(op, min_size=1, max_size=60))
def test_engine_matches_reference(pageblocks, wm, ops):
    n = 512 * pageblocks
    eng, ref = _engine.Zone(n), ReferenceZone(n)
    for z in (eng, ref):
        z.set_watermarks(wm, wm + wm // 4, wm + wm // 2)
    same_state(eng, ref)
    held = []
    for o in ops:
        if o[0] == "alloc":
            _, order, mt, aflags, pflags, count = o
            for _ in range(count if order < 3 else 1):
                a = eng.alloc(order, mt, aflags, pflags)
                b = ref.alloc(order, mt, aflags, pflags)
                assert a == b
                if a < 0:
                    break
                held.append((a, order))
        elif held:
            _, start, frac = o
            k = int(start * len(held))
            victims = held[k:k + max(1, int(frac * 50))]
            del held[k:k + len(victims)]
            for pfn, order in victims:
                eng.free(pfn, order)
                ref.free(pfn, order)
        same_state(eng, ref)
        assert eng.check() == 0


def test_long_random_run_matches_reference():
    """A seeded 6000-step run on a crowded zone, where claims, steals and boosts are common."""
    rng = np.random.default_rng(1)
    n = 512 * 16
    eng, ref = _engine.Zone(n), ReferenceZone(n)
    for z in (eng, ref):
        z.set_watermarks(100, 125, 150)
    held = []
    for step in range(6000):
        if rng.random() < 0.55:
            order = int(rng.choice([0, 0, 0, 0, 1, 2, 3, 4, 9, 10]))
            mt, aflags, pflags = int(rng.integers(3)), int(rng.choice(ALLOC_FLAGS)), int(rng.choice(FLAGS))
            a, b = eng.alloc(order, mt, aflags, pflags), ref.alloc(order, mt, aflags, pflags)
            assert a == b, step
            if a >= 0:
                held.append((a, order))
        elif held:
            pfn, order = held.pop(int(rng.integers(len(held))))
            eng.free(pfn, order)
            ref.free(pfn, order)
        if step % 500 == 0:
            same_state(eng, ref)
    same_state(eng, ref)
    assert eng.alloc_fallbacks > 100 and eng.pageblocks_claimed > 100 and eng.check() == 0


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 512))
def test_run_freeing_equals_page_by_page_freeing(seed, n):
    """Zone.free_runs (aligned runs freed as blocks, used by collapse) leaves the same free
    blocks, pageblock types and counters as freeing the pages one at a time; only the order of
    blocks within a free list may differ (the kernel's own order there comes from its per-cpu
    lists, which thpcore does not model)."""
    rng = np.random.default_rng(seed)
    eng, ref = _engine.Zone(512 * 8), ReferenceZone(512 * 8)
    for z in (eng, ref):
        z.set_watermarks(0, 0, 0)
    pfns = [eng.alloc(0, 1, 0, _engine.PY_PG_LRU) for _ in range(2000)]
    assert pfns == [ref.alloc(0, 1, 0, _engine.PY_PG_LRU) for _ in range(2000)]
    start = int(rng.integers(0, 2000 - n))
    victims = pfns[start:start + n]
    if rng.random() < 0.5:
        victims = list(rng.permutation(victims))
    eng.free_runs(victims)
    for p in victims:
        ref.free(int(p), 0)
    assert np.array_equal(eng.free_area(), ref.free_area())
    assert np.array_equal(eng.pageblock_counts(), ref.pageblock_counts())
    assert (eng.nr_free_pages, eng.pgfree) == (ref.nr_free_pages, ref.pgfree)
    for mt in range(5):
        for o in range(11):
            assert sorted(eng.free_list(mt, o)) == sorted(ref.free_list(mt, o))
    assert eng.check() == 0
