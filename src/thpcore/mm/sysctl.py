"""/proc/sys/vm: the page-allocator and compaction sysctls the simulator models.

Writes parse like proc_dointvec_minmax(): leading and trailing blanks allowed, an optional
sign, a base-0 integer (so "0x10" is 16), out-of-range or malformed input gives EINVAL.
"""

from __future__ import annotations

import errno
import re
from typing import TYPE_CHECKING

from thpcore.units import parse_c_integer

if TYPE_CHECKING:
    from thpcore.mm.page_alloc import PageAllocator

INT_MAX = (1 << 31) - 1
_INT_RE = re.compile(r"[ \t\n]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)[ \t\n]*")

# name -> (min, max)
RANGES = {
    "min_free_kbytes": (0, INT_MAX),
    "watermark_scale_factor": (1, 3000),
    "watermark_boost_factor": (0, INT_MAX),
    "extfrag_threshold": (0, 1000),
    "compaction_proactiveness": (0, 100),
}


class Sysctl:
    ROOT = "/proc/sys/vm"

    def __init__(self, page_alloc: "PageAllocator", compact_memory=None):
        self._pa = page_alloc
        self._compact_memory = compact_memory

    def paths(self) -> list[str]:
        return [f"{self.ROOT}/{name}" for name in RANGES] + [f"{self.ROOT}/compact_memory"]

    def get(self, name: str) -> int:
        return int(getattr(self._pa, name))

    def set(self, name: str, value: int) -> None:
        """Typed write (m.sysctl.set('min_free_kbytes', 65536)); EINVAL out of range."""
        if name not in RANGES:
            raise KeyError(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} takes an int, not {type(value).__name__}")
        lo, hi = RANGES[name]
        if not lo <= value <= hi:
            raise OSError(errno.EINVAL, f"Invalid argument: {name}={value} outside {lo}..{hi}")
        pa = self._pa
        setattr(pa, name, value)
        if name == "min_free_kbytes":
            pa.user_min_free_kbytes = value
            pa.setup_per_zone_wmarks()
        elif name == "watermark_scale_factor":
            pa.setup_per_zone_wmarks()

    def read(self, path: str) -> str:
        name = path.rsplit('/', 1)[1]
        if name == "compact_memory":
            raise PermissionError(errno.EACCES, "Permission denied", path)   # mode 0200
        return f"{self.get(name)}\n"

    def write(self, path: str, data: str | bytes) -> int:
        name = path.rsplit("/", 1)[1]
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data).decode("latin-1")
        if not isinstance(data, str):
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        if not data:
            return 0
        m = _INT_RE.fullmatch(data)
        if not m:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        value = parse_c_integer(m.group(2)) * (-1 if m.group(1) == "-" else 1)
        if name == "compact_memory":
            if value != 1:
                raise OSError(errno.EINVAL, "Invalid argument", path)
            self._compact_memory()
            return len(data)
        try:
            self.set(name, value)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None
        return len(data)
