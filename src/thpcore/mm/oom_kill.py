"""mm/oom_kill.c: choose the task to kill and kill it.

The victim dies through its own exit() (the kernel sends SIGKILL and the task exits in its own
context), so its exit_mmap() is charged to the victim: the one call from the kernel model into
a task object rather than down an import."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel
    from thpcore.mm.memcontrol import MemCgroup


def oom_kill(kernel: "Kernel", memcg: "MemCgroup | None" = None):
    """select_bad_process() + oom_kill_process(): the process (in memcg's subtree, or
    anywhere) with the most rss + swap + page tables is killed. Returns it, or None."""
    ids = None if memcg is None else {c.id for c in memcg.subtree()}
    best, points = None, 0
    for p in kernel.processes():
        if ids is not None and p.memcg.id not in ids:
            continue
        tables = sum(1 for _ in p.mm.populated_pmds())
        badness = p.mm.anon_rss + p.mm.swap_ents + tables
        if best is None or badness > points:
            best, points = p, badness
    if best is None:
        return None
    best.exit_reason = "oom"
    best.exit()
    kernel.count("oom_kill")
    for c in best.memcg.ancestors():
        c.events["oom_kill"] += 1
    return best
