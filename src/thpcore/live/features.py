"""What this live host offers: ``features()`` probes it, and ``Unsupported`` is raised where a
live feature is missing (under pytest it is a skip)."""

from __future__ import annotations

import errno as _errno
import os
import sys

from thpcore import errors
from thpcore.constants import MADV_COLLAPSE
from thpcore.live.host import HPAGE_PMD_SIZE, PAGE_SIZE, THP_ROOT
from thpcore.live.region import Region
from thpcore.live.syscalls import pidfd_open

# Under pytest (already imported by the test run), Unsupported is also a skip; otherwise only
# thpcore's Unsupported, so the library never imports pytest itself.
_SkipBase = sys.modules["pytest"].skip.Exception if "pytest" in sys.modules else None


class Unsupported(errors.Unsupported, *((_SkipBase,) if _SkipBase else ())):
    """A live feature is not available here: a :class:`thpcore.errors.Unsupported` (ValueError).
    Under pytest it is also pytest.skip.Exception (a BaseException): raising it from a test or
    fixture skips the test."""

    def __init__(self, msg: str = "unsupported"):
        if _SkipBase is None:
            super().__init__(msg)
        else:  # Skipped's own __init__ (ValueError.__init__ takes no keywords)
            _SkipBase.__init__(self, msg=msg, allow_module_level=True)
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
