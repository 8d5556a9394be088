"""Compaction throughput: pages migrated per second by a full compaction of a fragmented zone
(target, issue 5: >= 10 million)."""

import thpcore
from thpcore import MADV_DONTNEED


def test_pages_migrated_per_second(benchmark):
    m = thpcore.Machine("2G", seed=0, transparent_hugepage="never")
    p = m.spawn()
    size = 1800 << 20
    a = p.mmap(size)
    p.write(a, size)

    def fragment():
        p.madvise(a, size, MADV_DONTNEED)
        p.write(a, size)
        for off in range(0, size, 128 << 10):
            p.madvise(a + off, 64 << 10, MADV_DONTNEED)
        return (), {}

    def compact():
        m.page_tables.compact(-1, True, True)

    benchmark.pedantic(compact, setup=fragment, rounds=5, iterations=1)
    migrated = m.page_tables.compact_stats()["migrated"]
    benchmark.extra_info["pages_migrated_per_round"] = migrated
    benchmark.extra_info["pages_migrated_per_second"] = migrated / benchmark.stats.stats.mean
    m.check()
