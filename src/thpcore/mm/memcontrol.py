"""mm/memcontrol.c for cgroup v2 anonymous memory: the hierarchy, memory.max/high/current/stat/
events at their /sys/fs/cgroup paths, charging with limit reclaim, and the memcg OOM killer."""

from __future__ import annotations

import errno
import posixpath
from typing import TYPE_CHECKING

from thpcore.mm.oom_kill import oom_kill
from thpcore.mm.vmscan import SWAP_CLUSTER_MAX, try_to_free_mem_cgroup_pages
from thpcore.units import PAGE_SIZE, parse_size

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel

CGROUP_ROOT = "/sys/fs/cgroup"
MAX_RECLAIM_RETRIES = 16
MEMCG_CHARGE_BATCH = 64
CONTROL_FILES = ("memory.max", "memory.high", "memory.current", "memory.stat", "memory.events",
                 "memory.reclaim")
EVENT_NAMES = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")


class MemCgroup:
    def __init__(self, cid: int, path: str, parent: "MemCgroup | None"):
        self.id = cid
        self.path = path
        self.parent = parent
        self.children: list[MemCgroup] = []
        self.max_pages: int | None = None          # None: "max"
        self.high_pages: int | None = None
        self.events = dict.fromkeys(EVENT_NAMES, 0)
        self.stat_events = {"thp_fault_alloc": 0, "thp_collapse_alloc": 0}

    def ancestors(self):
        c = self
        while c is not None:
            yield c
            c = c.parent

    def subtree(self):
        yield self
        for ch in self.children:
            yield from ch.subtree()

    def __repr__(self):
        return f"MemCgroup({self.path!r})"


class CgroupTree:
    """m.cgroups: create("batch"), create("batch/low"), get(path)."""

    def __init__(self, kernel: "Kernel"):
        self.m = kernel
        self.root = MemCgroup(0, "", None)
        self.by_path = {"": self.root}
        self._next_id = 1
        self.any_max = False             # fast paths skip limit checks until a limit is set
        self.any_high = False

    def create(self, path: str) -> MemCgroup:
        if not isinstance(path, str):
            raise TypeError("cgroup path must be a str")
        path = path.strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError(f"bad cgroup path {path!r}")
        if path in self.by_path:
            raise FileExistsError(errno.EEXIST, "File exists", path)
        parent = self.by_path.get(posixpath.dirname(path))
        if parent is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if self._next_id >= 1 << 16:
            raise OSError(errno.ENOSPC, "No space left on device: too many cgroups")
        cg = MemCgroup(self._next_id, path, parent)
        self._next_id += 1
        parent.children.append(cg)
        self.by_path[path] = cg
        return cg

    def get(self, path: str) -> MemCgroup:
        cg = self.by_path.get(path.strip("/"))
        if cg is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return cg

    # ---- accounting -----------------------------------------------------------------------------

    def usage_pages(self, cg: MemCgroup) -> int:
        usage = self.m.page_alloc.zone.memcg_usage()
        return int(sum(int(usage[c.id]) for c in cg.subtree()))

    def margin(self, cg: MemCgroup) -> int | None:
        """Pages that may still be charged to cg before some ancestor hits memory.max."""
        if not self.any_max:
            return None
        best = None
        for c in cg.ancestors():
            if c.max_pages is not None:
                room = c.max_pages - self.usage_pages(c)
                best = room if best is None else min(best, room)
        return best

    def over_limit(self, cg: MemCgroup, nr: int) -> MemCgroup | None:
        if not self.any_max:
            return None
        for c in cg.ancestors():
            if c.max_pages is not None and self.usage_pages(c) + nr > c.max_pages:
                return c
        return None

    def try_charge(self, cg: MemCgroup, nr: int, can_reclaim: bool) -> bool:
        """try_charge_memcg(): fits, or reclaim within the limiting memcg (up to 16 rounds;
        for more than 8 pages only a sufficient margin counts), else fail. No OOM here."""
        for _ in range(MAX_RECLAIM_RETRIES + 1):
            limiting = self.over_limit(cg, nr)
            if limiting is None:
                return True
            limiting.events["max"] += 1
            if not can_reclaim:
                return False
            got = try_to_free_mem_cgroup_pages(self.m, limiting,
                                               max(nr, MEMCG_CHARGE_BATCH))
            if not got:
                return False
        return self.over_limit(cg, nr) is None

    def memory_reclaim(self, cg: MemCgroup, data: str) -> int:
        """memory.reclaim: proactive reclaim of "SIZE [swappiness=N|max]" from the subtree in
        batches of a quarter of what is left (at least SWAP_CLUSTER_MAX pages); EAGAIN once
        MAX_RECLAIM_RETRIES rounds in a row got nothing. The swappiness key is checked and
        otherwise ignored (anon and lazyfree pages are reclaimed as without it)."""
        tokens = data.split()
        if not tokens:
            raise OSError(errno.EINVAL, "Invalid argument", "memory.reclaim")
        try:
            want = parse_size(tokens[0]) // PAGE_SIZE
        except (ValueError, TypeError):
            raise OSError(errno.EINVAL, "Invalid argument", "memory.reclaim") from None
        for tok in tokens[1:]:
            key, _, value = tok.partition("=")
            if key != "swappiness" or not (value == "max" or (value.isdigit()
                                                              and int(value) <= 200)):
                raise OSError(errno.EINVAL, "Invalid argument", "memory.reclaim")
        reclaimed, retries = 0, MAX_RECLAIM_RETRIES
        while reclaimed < want:
            batch = max((want - reclaimed) // 4, SWAP_CLUSTER_MAX)
            got = try_to_free_mem_cgroup_pages(self.m, cg, batch)
            if not got:
                if not retries:
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable",
                                          "memory.reclaim")
                retries -= 1
            reclaimed += got
        return len(data)

    # ---- cgroupfs -----------------------------------------------------------------------------

    def paths(self) -> dict[str, tuple[MemCgroup, str]]:
        out = {}
        for path, cg in self.by_path.items():
            if cg is self.root:
                continue
            for f in CONTROL_FILES:
                out[f"{CGROUP_ROOT}/{path}/{f}"] = (cg, f)
        return out

    def read(self, cg: MemCgroup, name: str) -> str:
        if name == "memory.reclaim":          # write-only: kernfs refuses the open for read
            raise PermissionError(errno.EACCES, "Permission denied", name)
        if name in ("memory.max", "memory.high"):
            v = cg.max_pages if name == "memory.max" else cg.high_pages
            return "max\n" if v is None else f"{v * PAGE_SIZE}\n"
        if name == "memory.current":
            return f"{self.usage_pages(cg) * PAGE_SIZE}\n"
        if name == "memory.events":
            return "".join(f"{k} {cg.events[k]}\n" for k in EVENT_NAMES)
        if name == "memory.stat":
            anon = self.usage_pages(cg) * PAGE_SIZE
            thp = sum(1 for head in self.m.thp_pmd_mappings
                      if self.m.page_alloc.zone.frames()["memcg"][head] in
                      {c.id for c in cg.subtree()}) * (2 << 20)
            lines = [("anon", anon), ("anon_thp", thp)]
            lines += [(k, sum(c.stat_events[k] for c in cg.subtree())) for k in cg.stat_events]
            return "".join(f"{k} {v}\n" for k, v in lines)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)

    def write(self, cg: MemCgroup, name: str, data: str) -> int:
        if name == "memory.reclaim":
            return self.memory_reclaim(cg, data)
        if name not in ("memory.max", "memory.high"):
            raise PermissionError(errno.EACCES, "Permission denied", name)
        text = data.strip()
        if text == "max":
            pages = None
        else:
            try:
                pages = parse_size(text) // PAGE_SIZE
            except (ValueError, TypeError):
                raise OSError(errno.EINVAL, "Invalid argument", name) from None
        if name == "memory.high":
            cg.high_pages = pages
            self.any_high = self.any_high or pages is not None
            return len(data)
        cg.max_pages = pages
        self.any_max = self.any_max or pages is not None
        # memory_max_write(): reclaim down to the new limit, then OOM-kill inside the cgroup.
        retries = MAX_RECLAIM_RETRIES
        while pages is not None and self.usage_pages(cg) > pages:
            if try_to_free_mem_cgroup_pages(self.m, cg, self.usage_pages(cg) - pages):
                continue
            if retries:
                retries -= 1
                continue
            cg.events["oom"] += 1
            if not oom_kill(self.m, cg):
                break
        return len(data)
