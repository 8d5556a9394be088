"""The engine against the pure-Python reference (thpcore.reference.khugepaged) on the same
inputs as test_bench_collapse.py (target, issue 9: the engine >= 100x on scan and collapse),
plus the memory and khugepaged-speed figures of `thpcore bench`."""

from thpcore.lab import bench
from thpcore.reference import khugepaged as ref


def test_reference_scan(benchmark):
    rate = benchmark.pedantic(ref.bench_scan, args=(256,), kwargs={"rounds": 1}, rounds=1,
                              iterations=1)
    benchmark.extra_info["reference_regions_per_second"] = rate


def test_reference_collapse(benchmark):
    rate = benchmark.pedantic(ref.bench_collapse, args=(64,), kwargs={"rounds": 1}, rounds=1,
                              iterations=1)
    benchmark.extra_info["reference_regions_per_second"] = rate


def test_bytes_per_page(benchmark):
    value = benchmark.pedantic(bench.bench_bytes_per_page, rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_4k_page"] = value


def test_khugepaged_speed(benchmark):
    value = benchmark.pedantic(bench.bench_khugepaged_ratio, rounds=1, iterations=1)
    benchmark.extra_info["simulated_s_per_wall_s"] = value
