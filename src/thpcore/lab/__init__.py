"""Scenarios, workloads, the runner, sweeps, reports, traces and benchmarks."""
