"""``Region``: an anonymous mapping made with libc mmap, with madvise / mprotect / munmap on
sub-ranges, page touching (``write``/``read`` of the first 32-bit int of every 4 KiB page) and
its /proc views (smaps records and sums, smaps_rollup, raw pagemap entries)."""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct

from thpcore.constants import (MADV_NORMAL, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_PRIVATE,
                               PROT_NONE, PROT_READ, PROT_WRITE)
from thpcore.live.host import HPAGE_PMD_SIZE, PAGE_SIZE, KiB, _read
from thpcore.live.readers import smaps_rollup
from thpcore.live.syscalls import raw_madvise, raw_mmap, raw_mprotect, raw_munmap
from thpcore.proc.smaps import parse_smaps

try:  # numpy is a thpcore dependency; fall back to ctypes loops without it
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None


def _page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


class Region:
    """An anonymous (by default private) mapping made with libc mmap.

    Offsets are relative to ``addr`` and must be page aligned for write/read/munmap/
    mprotect (madvise takes any offset so that its argument checks can be probed).  The region
    remembers which of its pages are unmapped or not readable/writable so that ``write`` /
    ``read`` raise ValueError instead of crashing the interpreter (``force=True`` skips that,
    e.g. to provoke SIGSEGV in a forked child).
    """

    def __init__(self, addr: int, length: int, prot: int, owned: bool = True):
        self.addr, self.length = addr, length
        self.npages = length // PAGE_SIZE
        self._prot = bytearray([prot]) * self.npages  # per page; 0xff = unmapped
        self.owned = owned

    # -- construction
    @classmethod
    def mmap(cls, length: int, addr: int | None = None, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, fixed: bool = False) -> "Region":
        """mmap(addr, length, prot, flags | (MAP_FIXED if fixed), -1, 0)."""
        length = _page_align(length)
        if fixed:
            flags |= MAP_FIXED
        got = raw_mmap(length, addr, prot, flags)
        return cls(got, length, prot)

    @classmethod
    def at(cls, addr: int, length: int, prot: int = PROT_READ | PROT_WRITE,
           flags: int = MAP_PRIVATE | MAP_ANONYMOUS) -> "Region":
        """mmap exactly at ``addr`` with MAP_FIXED_NOREPLACE (OSError EEXIST if taken).

        Useful far away from mmap_base (e.g. 0x100000000000): the top-down allocator never
        looks there, so holes punched into such a region are not refilled by the interpreter's
        own mmaps (a hole next to mmap_base can be, and destructive advice on the "hole" would
        then hit the interpreter's memory)."""
        length = _page_align(length)
        got = raw_mmap(length, addr, prot, flags | MAP_FIXED_NOREPLACE)
        if got != addr:  # pre-4.17 kernels ignore the flag and treat addr as a hint
            raw_munmap(got, length)
            raise OSError(_errno.EEXIST, f"could not map at {addr:#x} (got {got:#x})")
        return cls(got, length, prot)

    @classmethod
    def aligned(cls, length: int, align: int = HPAGE_PMD_SIZE, offset: int = 0,
                prot: int = PROT_READ | PROT_WRITE, guard: bool = True) -> "Region":
        """A mapping whose start is ``offset`` bytes past an ``align`` boundary.

        Maps length + 2*align + offset bytes and either keeps the excess on both sides (always
        at least one page each) as PROT_NONE guards (guard=True: the region's VMA cannot merge
        with mappings made later next to it; the guards are unmapped with the region on close)
        or unmaps it (guard=False: then later mappings may merge with the region's VMA).
        """
        length = _page_align(length)
        total = length + 2 * align + offset
        base = raw_mmap(total, None, prot)
        # the first boundary strictly above base: leaves >= 1 page below and above the region
        # (head = align+offset if base is aligned, tail = align + base%align otherwise)
        start = (base // align + 1) * align + offset
        assert base < start and start + length < base + total
        r = cls(start, length, prot)
        head, tail = start - base, base + total - (start + length)
        if guard:
            if head:
                raw_mprotect(base, head, PROT_NONE)
            if tail:
                raw_mprotect(start + length, tail, PROT_NONE)
            r._guards = [(base, head), (start + length, tail)]
        else:
            if head:
                raw_munmap(base, head)
            if tail:
                raw_munmap(start + length, tail)
            r._guards = []
        return r

    # -- helpers
    def _range(self, off: int, length: int | None) -> tuple[int, int]:
        if length is None:
            length = self.length - off
        if off < 0 or length < 0 or off + length > self.length:
            raise ValueError(f"[{off:#x}, +{length:#x}) is outside the region "
                             f"(length {self.length:#x})")
        if off % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError("offset and length must be page aligned")
        return off // PAGE_SIZE, length // PAGE_SIZE

    def _check(self, p0: int, n: int, need: int, force: bool):
        if force:
            return
        sl = bytes(self._prot[p0:p0 + n])
        for prot in set(sl):
            if prot == 0xFF or prot & need != need:
                i = p0 + sl.index(prot)
                what = "is unmapped" if prot == 0xFF else f"has prot {prot:#x}"
                raise ValueError(f"page {i} (offset {i * PAGE_SIZE:#x}) {what}")

    def _words(self, p0: int, n: int):
        """A numpy view (n, PAGE_SIZE//4) uint32 over pages [p0, p0+n)."""
        buf = (ctypes.c_uint32 * (n * PAGE_SIZE // 4)).from_address(self.addr + p0 * PAGE_SIZE)
        return _np.frombuffer(buf, dtype=_np.uint32).reshape(n, PAGE_SIZE // 4)

    # -- memory access
    def write(self, off: int = 0, length: int | None = None, value=1,
              force: bool = False) -> None:
        """Store the 32-bit ``value`` into the first int of every 4 KiB page of the range
        (a write fault on every page, in ascending address order).  ``value`` may also be a
        sequence / array with one value per page (e.g. ``range(n)`` to tell pages apart)."""
        p0, n = self._range(off, length)
        self._check(p0, n, PROT_WRITE, force)
        if isinstance(value, int):
            value &= 0xFFFFFFFF
        elif len(value) != n:
            raise ValueError(f"{len(value)} values for {n} pages")
        if _np is not None:
            vals = value if isinstance(value, int) else \
                _np.asarray(value, dtype=_np.int64).astype(_np.uint32)
            self._words(p0, n)[:, 0] = vals
        else:
            for k, i in enumerate(range(p0, p0 + n)):
                v = value if isinstance(value, int) else value[k] & 0xFFFFFFFF
                ctypes.c_uint32.from_address(self.addr + i * PAGE_SIZE).value = v

    def read(self, off: int = 0, length: int | None = None, force: bool = False):
        """The first 32-bit int of every page of the range (a read fault on every page);
        a numpy uint32 array (a list without numpy)."""
        p0, n = self._range(off, length)
        self._check(p0, n, PROT_READ, force)
        if _np is not None:
            return self._words(p0, n)[:, 0].copy()
        return [ctypes.c_uint32.from_address(self.addr + i * PAGE_SIZE).value
                for i in range(p0, p0 + n)]

    # -- syscalls on sub-ranges
    def madvise(self, off: int = 0, length: int | None = None, advice: int = MADV_NORMAL) -> int:
        """madvise(addr+off, length, advice); returns 0 or the errno (never raises).
        off/length are passed as given (wrapped to unsigned), so invalid ranges can be probed."""
        if length is None:
            length = self.length - off
        return raw_madvise(self.addr + off, length, advice)

    def mprotect(self, off: int = 0, length: int | None = None,
                 prot: int = PROT_READ | PROT_WRITE) -> int:
        """mprotect on a sub-range; returns 0 or the errno."""
        p0, n = self._range(off, length)
        rc = raw_mprotect(self.addr + off, n * PAGE_SIZE, prot)
        if rc == 0:  # unmapped pages (0xff) stay unmapped, every other page gets `prot`
            table = bytes([prot & 0xFF] * 255 + [0xFF])
            self._prot[p0:p0 + n] = bytes(self._prot[p0:p0 + n]).translate(table)
        return rc

    def munmap(self, off: int = 0, length: int | None = None) -> int:
        """munmap a sub-range; returns 0 or the errno."""
        p0, n = self._range(off, length)
        rc = raw_munmap(self.addr + off, n * PAGE_SIZE)
        if rc == 0:
            self._prot[p0:p0 + n] = b"\xff" * n
        return rc

    def forget(self, off: int, length: int) -> None:
        """Pages [off, off+length) are no longer this region's (mremap moved or dropped them):
        close() will not unmap them, whatever maps that range by then."""
        p0, n = self._range(off, length)
        self._prot[p0:p0 + n] = b"\xff" * n

    def adopt(self, off: int, length: int, prot: int) -> None:
        """Pages [off, off+length) are mapped again, with prot (mremap grew into them)."""
        p0, n = self._range(off, length)
        self._prot[p0:p0 + n] = bytes([prot]) * n

    def close(self) -> None:
        """Unmap whatever is left of the region (and its guards): only the runs of pages that
        are still its own, since a hole may since have been reused by another mapping."""
        if self.owned:
            p = 0
            while p < self.npages:
                if self._prot[p] == 0xFF:
                    p += 1
                    continue
                q = p
                while q < self.npages and self._prot[q] != 0xFF:
                    q += 1
                raw_munmap(self.addr + p * PAGE_SIZE, (q - p) * PAGE_SIZE)
                p = q
            self._prot[:] = b"\xff" * self.npages
        for base, size in getattr(self, "_guards", ()):
            if size:
                raw_munmap(base, size)
        self._guards = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def end(self) -> int:
        return self.addr + self.length

    def __repr__(self):
        return f"Region({self.addr:#x}-{self.end:#x}, {self.length // KiB} KiB)"

    # -- /proc views
    def vmas(self, pid: str | int = "self") -> list[dict]:
        """smaps records (see parse_smaps) of every VMA that overlaps the region."""
        return [v for v in parse_smaps(_read(f"/proc/{pid}/smaps"))
                if v["start"] < self.end and v["end"] > self.addr]

    def smaps(self, partial: str = "error", pid: str | int = "self") -> dict[str, int]:
        """Sum of the numeric smaps fields (kB) over the VMAs lying inside [addr, addr+len).

        Also: 'THPeligible' (the number of those VMAs with THPeligible: 1) and 'nr_vmas'.
        A VMA that overlaps the region but sticks out of it (e.g. merged with a neighbouring
        mapping) raises ValueError with partial="error" (default), is added with
        partial="include", or skipped with partial="exclude".
        """
        if partial not in ("error", "include", "exclude"):
            raise ValueError("partial must be 'error', 'include' or 'exclude'")
        out: dict[str, int] = {}
        nr = elig = 0
        for v in self.vmas(pid):
            inside = v["start"] >= self.addr and v["end"] <= self.end
            if not inside:
                if partial == "error":
                    raise ValueError(f"VMA {v['start']:#x}-{v['end']:#x} sticks out of {self!r} "
                                     "(merged with a neighbour?); pass partial='include' or "
                                     "'exclude', or use Region.aligned()")
                if partial == "exclude":
                    continue
            nr += 1
            elig += v["THPeligible"] or 0
            for k, val in v["fields"].items():
                out[k] = out.get(k, 0) + val
        out["THPeligible"] = elig
        out["nr_vmas"] = nr
        return out

    def smaps_text(self, pid: str | int = "self") -> str:
        """Verbatim smaps text of the VMAs overlapping the region."""
        return "".join(v["text"] for v in self.vmas(pid))

    @staticmethod
    def rollup(pid: str | int = "self") -> dict[str, int]:
        """/proc/<pid>/smaps_rollup as {field: kB}."""
        return smaps_rollup(pid)

    def pagemap(self, off: int = 0, length: int | None = None,
                pid: str | int = "self") -> list[int]:
        """Raw 64-bit /proc/<pid>/pagemap entries for the pages of the range (PFNs are only
        filled in for root)."""
        p0, n = self._range(off, length)
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        try:
            want = n * 8
            data = b""
            pos = (self.addr // PAGE_SIZE + p0) * 8
            while len(data) < want:
                chunk = os.pread(fd, want - len(data), pos + len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        return list(struct.unpack(f"<{len(data) // 8}Q", data))

    def thp_eligible(self) -> list[int | None]:
        return [v["THPeligible"] for v in self.vmas()]

    def vmflags(self) -> list[list[str]]:
        return [v["VmFlags"] for v in self.vmas()]
