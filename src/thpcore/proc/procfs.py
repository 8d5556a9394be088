"""/proc views in the kernel's exact text, and parsers that read the same text from a live host.

Formats follow mm/vmstat.c (frag_show_print, pagetypeinfo_showfree_print,
pagetypeinfo_showblockcount_print). The simulated machine has one node and one zone, Normal.
"""

from __future__ import annotations

import errno
import posixpath
import re
from typing import TYPE_CHECKING

import numpy as np

from thpcore.mm.page_alloc import MIGRATETYPE_NAMES, NR_PAGE_ORDERS, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER
from thpcore.mm.vmstat import parse_vmstat
from thpcore.proc import task_mmu
from thpcore.proc.smaps import parse_smaps

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel

ZONE_NAME = "Normal"
NODE_ID = 0
PAGETYPEINFO_FREECOUNT_CAP = 100000     # the kernel stops counting a list here and prints '>'


def render_buddyinfo(free_area: np.ndarray, node: int = NODE_ID, zone: str = ZONE_NAME) -> str:
    per_order = free_area.sum(axis=0)
    return (f"Node {node}, zone {zone:>8} "
            + "".join(f"{int(n):6d} " for n in per_order) + "\n")


def render_pagetypeinfo(free_area: np.ndarray, pageblock_counts: np.ndarray,
                        node: int = NODE_ID, zone: str = ZONE_NAME) -> str:
    out = [f"Page block order: {PAGEBLOCK_ORDER}\n",
           f"Pages per block:  {PAGEBLOCK_NR_PAGES}\n",
           "\n",
           f"{'Free pages count per migrate type at order':<43} "
           + "".join(f"{o:6d} " for o in range(NR_PAGE_ORDERS)) + "\n"]
    for mt, name in enumerate(MIGRATETYPE_NAMES):
        cells = []
        for o in range(NR_PAGE_ORDERS):
            n = int(free_area[mt, o])
            if n >= PAGETYPEINFO_FREECOUNT_CAP:
                cells.append(f">{PAGETYPEINFO_FREECOUNT_CAP:6d} ")
            else:
                cells.append(f"{n:6d} ")
        out.append(f"Node {node:4d}, zone {zone:>8}, type {name:>12} " + "".join(cells) + "\n")
    out.append(f"\n{'Number of blocks type ':<23}"
               + "".join(f"{name:>12} " for name in MIGRATETYPE_NAMES) + "\n")
    out.append(f"Node {node}, zone {zone:>8} "
               + "".join(f"{int(n):12d} " for n in pageblock_counts) + "\n")
    return "".join(out)


_BUDDY_RE = re.compile(r"Node\s+(\d+),\s+zone\s+(\S+)\s+((?:\d+\s*)+)$")
_FREE_RE = re.compile(r"Node\s+(\d+),\s+zone\s+(\S+),\s+type\s+(\S+)\s+((?:>?\d+\s*)+)$")
_BLOCKS_RE = re.compile(r"Node\s+(\d+),\s+zone\s+(\S+)\s+((?:\d+\s*)+)$")


def parse_buddyinfo(text: str) -> dict[tuple[int, str], list[int]]:
    """{(node, zone): free block counts per order} from /proc/buddyinfo text."""
    out = {}
    for line in text.splitlines():
        m = _BUDDY_RE.match(line.strip())
        if m:
            out[(int(m.group(1)), m.group(2))] = [int(x) for x in m.group(3).split()]
    return out


def parse_pagetypeinfo(text: str) -> dict:
    """{'pageblock_order', 'free': {(node, zone, type): [counts]}, 'blocks': {(node, zone):
    {type: count}}}; a capped count ('>100000') parses as 100000."""
    free: dict[tuple[int, str, str], list[int]] = {}
    blocks: dict[tuple[int, str], dict[str, int]] = {}
    block_types: list[str] = []
    order = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Page block order:"):
            order = int(s.split(":")[1])
        elif s.startswith("Number of blocks type"):
            block_types = s[len("Number of blocks type"):].split()
        elif (m := _FREE_RE.match(s)):
            free[(int(m.group(1)), m.group(2), m.group(3))] = [
                int(x.lstrip(">")) for x in m.group(4).split()]
        elif block_types and (m := _BLOCKS_RE.match(s)):
            counts = [int(x) for x in m.group(3).split()]
            blocks[(int(m.group(1)), m.group(2))] = dict(zip(block_types, counts))
    return {"pageblock_order": order, "free": free, "blocks": blocks}


def render_meminfo(m: "Kernel") -> str:
    """The /proc/meminfo fields the simulator models, in the kernel's order and format
    (show_val_kb: "%-16s%8lu kB"); unmodelled fields are left out rather than shown as 0."""
    pt = m.page_tables
    swap_total = max(pt.swap_slots - 1, 0)
    fields = [
        ("MemTotal", m.nr_pages),
        ("MemFree", m.page_alloc.zone.nr_free_pages),
        ("SwapTotal", swap_total),
        ("SwapFree", swap_total - pt.swap_used),
        ("AnonPages", m.vmstat["nr_anon_pages"]),
        ("PageTables", pt.nr_tables),
        ("AnonHugePages", len(m.thp_pmd_mappings) * 512),
    ]
    return "".join(f"{name + ':':<16}{pages * 4:8d} kB\n" for name, pages in fields)


def parse_meminfo(text: str) -> dict[str, int]:
    """{field: value} from /proc/meminfo text (kB, or a count for the HugePages_ lines)."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            name, rest = line.split(":", 1)
            out[name] = int(rest.split()[0])
    return out


class Procfs:
    """m.procfs.read(path) for the /proc files the simulator models."""

    SYSCTL_VM = "/proc/sys/vm"

    def __init__(self, machine: "Kernel"):
        self._m = machine

    def _files(self) -> dict:
        m = self._m
        zone = m.page_alloc.zone
        return {
            "/proc/buddyinfo": lambda: render_buddyinfo(zone.free_area()),
            "/proc/pagetypeinfo": lambda: render_pagetypeinfo(zone.free_area(),
                                                              zone.pageblock_counts()),
            "/proc/vmstat": lambda: m.vmstat.render(),
            "/proc/meminfo": lambda: render_meminfo(m),
        }

    def _task_file(self, path: str):
        m = re.fullmatch(r"/proc/(\d+|self)/(smaps|smaps_rollup)", path)
        if not m:
            return None
        if m.group(1) == "self":
            raise FileNotFoundError(errno.ENOENT, "the simulator has no current task", path)
        proc = self._m.process(int(m.group(1)))
        render = task_mmu.render_smaps if m.group(2) == "smaps" else task_mmu.render_smaps_rollup
        return render(self._m, proc.mm)

    def pagemap(self, pid: int, addr: int, length: int) -> np.ndarray:
        """/proc/PID/pagemap entries (uint64) for the pages of [addr, addr + length)."""
        proc = self._m.process(pid)
        start = addr & ~4095
        end = (addr + length + 4095) & ~4095
        return task_mmu.pagemap(self._m, proc.mm, start, end)

    def read(self, path: str) -> str:
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        path = posixpath.normpath(path)
        files = self._files()
        if path in files:
            return files[path]()
        text = self._task_file(path)
        if text is not None:
            return text
        if posixpath.dirname(path) == self.SYSCTL_VM and path in self._m.sysctl.paths():
            return self._m.sysctl.read(path)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    def write(self, path: str, data: str | bytes) -> int:
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        path = posixpath.normpath(path)
        if path in self._m.sysctl.paths():
            return self._m.sysctl.write(path, data)
        if path in self._files():
            raise PermissionError(errno.EACCES, "Permission denied", path)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)


__all__ = ["Procfs", "parse_buddyinfo", "parse_meminfo", "parse_smaps", "parse_pagetypeinfo", "parse_vmstat",
           "render_buddyinfo", "render_pagetypeinfo"]
