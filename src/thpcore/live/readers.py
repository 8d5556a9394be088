"""Readers of the live host's /proc and sysfs files (vmstat, meminfo, smaps_rollup, maps, the
mTHP stats), parsed with the simulator's own parsers where the format is shared, and raw
sysfs/cgroupfs reads and writes."""

from __future__ import annotations

import os

from thpcore.live.host import HPAGE_PMD_SIZE, THP_ROOT, KiB, _read
from thpcore.proc.procfs import parse_meminfo
from thpcore.proc.smaps import parse_smaps_rollup


def vmstat() -> dict[str, int]:
    """/proc/vmstat as {name: int}, in file order."""
    out = {}
    for line in _read("/proc/vmstat").splitlines():
        name, _, val = line.partition(" ")
        out[name] = int(val)
    return out


def vmstat_delta(before: dict[str, int], after: dict[str, int] | None = None,
                 names=None) -> dict[str, int]:
    """after - before (after defaults to now), only non-zero entries unless names is given."""
    after = vmstat() if after is None else after
    if names is not None:
        return {n: after.get(n, 0) - before.get(n, 0) for n in names}
    return {n: after[n] - before.get(n, 0) for n in after if after[n] != before.get(n, 0)}


def meminfo() -> dict[str, int]:
    """/proc/meminfo as {field: value}; values are kB except the HugePages_* counts."""
    return parse_meminfo(_read("/proc/meminfo"))


def mthp_stats(size_kb: int = HPAGE_PMD_SIZE // KiB) -> dict[str, int]:
    """/sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/stats/* as {name: int}."""
    d = f"{THP_ROOT}/hugepages-{size_kb}kB/stats"
    out = {}
    for name in sorted(os.listdir(d)):
        try:
            out[name] = int(_read(f"{d}/{name}"))
        except (OSError, ValueError):
            pass
    return out


def smaps_rollup(pid: str | int = "self") -> dict[str, int]:
    """/proc/<pid>/smaps_rollup as {field: kB} (the header line is skipped)."""
    return parse_smaps_rollup(_read(f"/proc/{pid}/smaps_rollup"))


def maps(pid: str | int = "self") -> list[tuple[int, int, str, str]]:
    """/proc/<pid>/maps as [(start, end, perms, name)]."""
    out = []
    for line in _read(f"/proc/{pid}/maps").splitlines():
        parts = line.split(None, 5)
        s, e = parts[0].split("-")
        out.append((int(s, 16), int(e, 16), parts[1], parts[5] if len(parts) > 5 else ""))
    return out


def sysfs_read(path: str) -> str:
    return _read(path)


def sysfs_write(path: str, text: str) -> int:
    """write(2) to a sysfs/cgroupfs file; the kernel's errno on refusal."""
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, text.encode())
    finally:
        os.close(fd)
