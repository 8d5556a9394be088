"""Buddy allocator throughput and memory (pytest-benchmark; `pytest benchmarks`).

Figures are reported in extra_info so `--benchmark-json` carries them; nothing here asserts a
time. Targets (issue 2): >= 20 million order-0 alloc+free pairs/s on one core; <= 12 bytes of
frame table per simulated 4 KiB frame.
"""

import resource

import pytest

import thpcore
from thpcore import _engine

BATCH = 4096


@pytest.fixture(scope="module")
def zone():
    z = _engine.Zone(1 << 20)                        # 4 GiB
    z.set_watermarks(1024, 1280, 1536)
    return z


def _pairs(z, order, mt, flags, batch):
    pfns = z.alloc_bulk(order, mt, batch, _engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT,
                        flags)
    z.free_bulk(pfns, order)
    return len(pfns)


@pytest.mark.parametrize("order, batch", [(0, BATCH), (9, 256)])
def test_alloc_free_pairs(benchmark, zone, order, batch):
    n = benchmark(_pairs, zone, order, 1, _engine.PY_PG_LRU, batch)
    assert n == batch
    benchmark.extra_info["pairs_per_call"] = batch
    benchmark.extra_info["pairs_per_second"] = batch / benchmark.stats.stats.mean
    assert zone.check() == 0


def test_fragmented_alloc_free_pairs(benchmark):
    """Pairs on a zone whose free memory is scattered order-0 holes (fallback paths hot)."""
    m = thpcore.Machine("1G", seed=0)
    pfns = m.kernel_alloc_bulk(0, "movable", 1 << 20)
    m.kernel_free_bulk(pfns[::3], 0)
    z = m.page_alloc.zone
    n = benchmark(_pairs, z, 0, 0, _engine.PY_PG_KERNEL, BATCH)
    benchmark.extra_info["pairs_per_second"] = n / benchmark.stats.stats.mean


def test_bytes_per_frame(benchmark):
    """Bytes of RAM per simulated 4 KiB frame: the frame table, and the process's RSS growth."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = benchmark.pedantic(lambda: thpcore.Machine("16G"), rounds=1, iterations=1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    z = m.page_alloc.zone
    benchmark.extra_info["frame_table_bytes_per_frame"] = z.nbytes / z.nr_pages
    benchmark.extra_info["rss_growth_bytes_per_frame"] = (after - before) * 1024 / z.nr_pages
    assert z.nbytes / z.nr_pages <= 12.01
