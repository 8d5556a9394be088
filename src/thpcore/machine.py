"""thpcore.Machine: the public face of one simulated host. It composes the kernel model
(thpcore.mm.kernel.Kernel holds every subsystem's state) with the procfs views and the
processes, and forwards; it owns no subsystem's logic or state."""

from __future__ import annotations

import numpy as np

from thpcore.mm import invariants
from thpcore.mm.kernel import Kernel
from thpcore.proc.procfs import Procfs
from thpcore.process import CAPABILITIES, Process
from thpcore.snapshot import rebuild
from thpcore.units import format_size


class Machine(Kernel):
    """A simulated Linux 6.18 host.

    Machine(memory="4G", swap="1G", seed=0, kernel="6.18", transparent_hugepage="madvise")

    `transparent_hugepage` is the boot-time THP mode (the kernel command line parameter of the
    same name; the Kconfig default of the distribution this models is "madvise").
    `swap_device` is "file" (a swap file: THPs are split before swap-out, as the live host
    showed) or "blockdev" (a swap partition: a THP can swap out whole into one cluster).
    """

    def __init__(self, memory: int | str = "4G", swap: int | str | None = None, seed: int = 0,
                 kernel: str = "6.18", transparent_hugepage: str = "madvise",
                 swap_device: str = "file", costs=None):
        super().__init__(memory, swap, seed, kernel, transparent_hugepage, swap_device, costs)
        self.procfs = Procfs(self)

    @property
    def kernel(self) -> str:
        """The kernel profile: "6.18", or "rfc-2022" (the 2022 MADV_COLLAPSE proposal)."""
        return self.version

    def spawn(self, name: str = "task", uid: int = 0, caps=None, cgroup: str = "") -> "Process":
        """A new process with an empty mm; uid 0 with every capability unless told otherwise;
        charged to `cgroup` (a path created with m.cgroups.create, "" for the root)."""
        memcg = self.cgroups.get(cgroup) if cgroup else self.cgroups.root
        if not isinstance(name, str):
            raise TypeError("name must be a str")
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2 ** 32 - 1:
            raise ValueError("uid must be an int in 0..2**32-2")
        if caps is None:
            caps = CAPABILITIES if uid == 0 else frozenset()
        elif isinstance(caps, str) or not all(isinstance(c, str) for c in caps):
            raise TypeError("caps must be a collection of capability names")
        else:
            caps = frozenset(caps)
            unknown = caps - CAPABILITIES
            if unknown:
                raise ValueError(f"unknown capabilities: {sorted(unknown)}")
        p = Process(self, self._next_pid, name, uid, caps)
        p.memcg = p.mm.memcg = memcg
        self._next_pid += 1
        self._processes[p.pid] = p
        return p

    def check(self) -> None:
        """Prove the invariants; raises InvariantError naming the first violation."""
        invariants.check(self)

    def state_hash(self) -> str:
        """A digest of the whole simulated state; equal seeds and operations give equal hashes."""
        return invariants.state_hash(self)

    @classmethod
    def from_snapshot(cls, path, memory=None, swap=None, seed: int = 0) -> "Machine":
        """Rebuild a process captured with `thpcore snapshot PID -o path` (see snapshot.py)."""
        with np.load(path) as snap:
            return rebuild(cls, {k: snap[k] for k in snap.files}, memory, swap, seed)

    def __repr__(self) -> str:
        return (f"Machine(memory={format_size(self.memory_bytes)!r}, kernel={self.kernel!r}, "
                f"seed={self.seed})")
