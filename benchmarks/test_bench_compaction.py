"""Compaction throughput: pages migrated per second by a full compaction of a fragmented zone
(target, issue 5: >= 10 million)."""

from thpcore.lab.bench import compaction_setup


def test_pages_migrated_per_second(benchmark):
    m, fragment = compaction_setup()

    def setup():
        fragment()
        return (), {}

    def compact():
        m.page_tables.compact(-1, True, True)

    benchmark.pedantic(compact, setup=setup, rounds=5, iterations=1)
    migrated = m.page_tables.compact_stats()["migrated"]
    benchmark.extra_info["pages_migrated_per_round"] = migrated
    benchmark.extra_info["pages_migrated_per_second"] = migrated / benchmark.stats.stats.mean
    m.check()
