"""The exceptions thpcore raises beside the kernel's own OSError(errno), and the one argument
check every system call entry uses. A leaf: imports nothing of thpcore."""

from __future__ import annotations

import errno

import numpy as np


class Unsupported(ValueError):
    """A request thpcore cannot serve: a call the kernel accepts but the simulator does not
    model (yet), or (``thpcore.live.Unsupported``, a subclass) a feature this host lacks."""


class InvariantError(AssertionError):
    """Machine.check() found simulator state that no kernel could be in."""


class SegmentationFault(OSError):
    """An access the process could not make (SIGSEGV); nothing was changed."""

    def __init__(self, addr: int, why: str):
        super().__init__(errno.EFAULT, f"Bad address: {why} at {addr:#x}")
        self.addr = addr


class OutOfMemory(OSError):
    """A fault could not allocate memory even after reclaim and OOM kills."""

    def __init__(self, msg: str = "out of memory during a page fault"):
        super().__init__(errno.ENOMEM, msg)


class OOMKilled(ProcessLookupError):
    """The faulting process itself was chosen by the OOM killer; it is gone."""

    def __init__(self, pid: int):
        super().__init__(errno.ESRCH, f"process {pid} was killed by the OOM killer")
        self.pid = pid


def int_arg(value, name: str) -> int:
    """A system call's integer argument: an int (numpy ints too, never a bool), else TypeError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return int(value)
