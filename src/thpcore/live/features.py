"""What this live host offers: ``features()`` probes it, and ``Unsupported`` is raised where a
live feature is missing (under pytest it is a skip)."""

from __future__ import annotations

import errno as _errno
import os
import sys

from thpcore.constants import MADV_COLLAPSE
from thpcore.live.host import HPAGE_PMD_SIZE, PAGE_SIZE, THP_ROOT
from thpcore.live.region import Region
from thpcore.live.syscalls import pidfd_open

# Under pytest (already imported by the test run), Unsupported *is* a skip; otherwise a plain
# exception, so the library never imports pytest itself.
_SkipBase = sys.modules["pytest"].skip.Exception if "pytest" in sys.modules else Exception


class Unsupported(_SkipBase):
    """A live feature is not available here. Under pytest this *is* a skip (pytest.skip.Exception,
    a BaseException): raising it from a test or fixture skips the test."""

    def __init__(self, msg: str = "unsupported"):
        if _SkipBase is Exception:
            super().__init__(msg)
        else:
            super().__init__(msg=msg, allow_module_level=True)
        self.msg = msg

    def __str__(self):
        return self.msg


def features() -> dict[str, object]:
    """What this host offers, with a reason for everything that is missing."""
    out: dict[str, object] = {"kernel": os.uname().release, "root": os.geteuid() == 0}
    out["thp"] = os.path.exists(THP_ROOT + "/enabled")
    out["kpageflags"] = os.access("/proc/kpageflags", os.R_OK)
    out["pagemap_pfns"] = out["root"] and os.path.exists("/proc/self/pagemap")
    # MADV_COLLAPSE: ask the kernel on a small region of our own (EINVAL if unknown advice
    # and the region can hold no THP either way; a 2 MiB-aligned written region tells).
    try:
        r = Region.aligned(HPAGE_PMD_SIZE)
        try:
            r.write(0, PAGE_SIZE, value=1)
            rc = r.madvise(0, HPAGE_PMD_SIZE, MADV_COLLAPSE)
            out["madv_collapse"] = rc in (0, _errno.ENOMEM, _errno.EAGAIN, _errno.EBUSY)
        finally:
            r.close()
    except OSError:
        out["madv_collapse"] = False
    try:
        fd = pidfd_open(os.getpid())
        os.close(fd)
        out["pidfd"] = True
    except OSError:
        out["pidfd"] = False
    return out
