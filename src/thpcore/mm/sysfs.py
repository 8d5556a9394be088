"""/sys/kernel/mm/transparent_hugepage: the THP knobs with the kernel's paths, texts and parsing.

Writes follow kernfs + the knob's store function exactly as the live 6.18 kernel showed them:
a write is cut to 4096 bytes, an empty write changes nothing and returns 0, words compare with
sysfs_streq() (one trailing newline allowed), numbers parse with kstrtouint/kstrtoul in base 10
(a leading '+', leading zeros, one trailing newline), shrink_underused parses with kstrtobool.
Read-only files refuse to open for writing (EACCES); unknown paths give ENOENT.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Callable
from typing import Any

THP_ROOT = "/sys/kernel/mm/transparent_hugepage"
KERNFS_MAX_WRITE = 4096
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

ENABLED_WORDS = ("always", "madvise", "never")
DEFRAG_WORDS = ("always", "defer", "defer+madvise", "madvise", "never")
SHMEM_WORDS = ("always", "within_size", "advise", "never", "deny", "force")
PER_SIZE_ENABLED_WORDS = ("always", "inherit", "madvise", "never")
PER_SIZE_SHMEM_WORDS = ("always", "inherit", "within_size", "advise", "never")

# The hugepages-<size>kB directories of x86-64 (4 KiB pages): anonymous THP comes in orders
# 2..9 (THP_ORDERS_ALL_ANON); the order-1 directory exists for shmem/file folios only.
ANON_ORDERS = tuple(range(2, 10))
PMD_ORDER = 9
SHMEM_ONLY_ORDERS = (1,)


def size_dir(order: int) -> str:
    return f"hugepages-{4 << order}kB"


# hugepages-<size>kB/stats/ (all read-only counters)
MTHP_STAT_NAMES = (
    "anon_fault_alloc", "anon_fault_declined", "anon_fault_fallback", "anon_fault_fallback_charge",
    "nr_anon", "nr_anon_partially_mapped", "shmem_alloc", "shmem_fallback", "shmem_fallback_charge",
    "split", "split_deferred", "split_failed", "swpin", "swpin_fallback", "swpin_fallback_charge",
    "swpout", "swpout_fallback", "zswpout",
)
# What an order without anonymous THP shows (the kernel hides the anon_* and nr_anon* files).
SHMEM_ONLY_STAT_NAMES = tuple(n for n in MTHP_STAT_NAMES
                              if not n.startswith(("anon_", "nr_anon", "split_deferred")))
# Gauges, computed from the frames when read (the kernel keeps them as counters).
MTHP_GAUGES = ("nr_anon", "nr_anon_partially_mapped")


def _einval(what: str) -> OSError:
    return OSError(errno.EINVAL, f"Invalid argument: {what}")


def _c_string(data: str) -> str:
    """kernfs NUL-terminates the buffer: the store function sees up to the first NUL."""
    return data.split("\0", 1)[0]


def _parse_ull_base10(text: str) -> int:
    """kstrtoull(s, 10): optional '+', decimal digits, optional single trailing newline."""
    s = _c_string(text)
    if s.startswith("+"):
        s = s[1:]
    if s.endswith("\n"):
        s = s[:-1]
    if not s or not s.isascii() or not s.isdigit():
        raise _einval(repr(text))
    value = int(s, 10)
    if value > U64_MAX:
        raise OSError(errno.ERANGE, "Numerical result out of range")
    return value


def kstrtobool(text: str) -> bool:
    s = _c_string(text)
    if not s:
        raise _einval(repr(text))
    c = s[0]
    if c in "yYtT1":
        return True
    if c in "nNfF0":
        return False
    if c in "oO" and len(s) > 1:
        if s[1] in "nN":
            return True
        if s[1] in "fF":
            return False
    raise _einval(repr(text))


class Knob:
    """One sysfs attribute: how its text parses and renders, and its typed validation."""

    readonly = False

    def parse(self, text: str) -> Any:          # kernel text -> value (raises OSError)
        raise AttributeError("read-only")

    def render(self, value: Any) -> str:
        return f"{value}\n"

    def check_typed(self, value: Any) -> Any:    # Python value -> value (TypeError / OSError)
        raise AttributeError("read-only")


class Choice(Knob):
    def __init__(self, words: tuple[str, ...]):
        self.words = words

    def parse(self, text: str) -> str:
        s = _c_string(text)
        if s.endswith("\n"):
            s = s[:-1]
        if s not in self.words:
            raise _einval(repr(text))
        return s

    def render(self, value: str) -> str:
        return " ".join(f"[{w}]" if w == value else w for w in self.words) + "\n"

    def check_typed(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected one of {self.words}, got {type(value).__name__}")
        if value not in self.words:
            raise _einval(f"{value!r} is not one of {self.words}")
        return value


class UInt(Knob):
    """kstrtouint(buf, 10) with a range; every failure is EINVAL (the store maps errors)."""

    def __init__(self, lo: int = 0, hi: int = U32_MAX):
        self.lo, self.hi = lo, hi

    def parse(self, text: str) -> int:
        try:
            value = _parse_ull_base10(text)
        except OSError:
            raise _einval(repr(text)) from None
        return self._range(value)

    def _range(self, value: int) -> int:
        if not self.lo <= value <= self.hi:
            raise _einval(f"{value} outside {self.lo}..{self.hi}")
        return value

    def check_typed(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an int, got {type(value).__name__}")
        return self._range(value)


class Flag01(Knob):
    """single_hugepage_flag_store(): kstrtoul base 10 (ERANGE on overflow), then 0 or 1."""

    def parse(self, text: str) -> int:
        value = _parse_ull_base10(text)
        if value > 1:
            raise _einval(repr(text))
        return value

    def check_typed(self, value: Any) -> int:
        if not isinstance(value, int):
            raise TypeError(f"expected 0 or 1, got {type(value).__name__}")
        if value not in (0, 1):
            raise _einval(f"{value} is not 0 or 1")
        return int(value)


class Bool(Flag01):
    """kstrtobool() (shrink_underused)."""

    def parse(self, text: str) -> int:
        return int(kstrtobool(text))


class ReadOnly(Knob):
    readonly = True


class KnobGroup:
    """A directory of knobs with typed attribute access (m.thp.enabled = "always")."""

    _knobs: dict[str, Knob] = {}

    def __init__(self, on_change: Callable[[str], None] | None = None, prefix: str = ""):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_on_change", on_change)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        knob = self._knobs.get(name)
        if knob is None:
            raise AttributeError(f"no knob named {name!r}")
        if knob.readonly:
            raise AttributeError(f"{name} is read-only")
        self._store(name, knob.check_typed(value))

    def _store(self, name: str, value: Any) -> None:
        self._values[name] = value
        if self._on_change is not None:
            self._on_change(self._prefix + name)

    def _set_counter(self, name: str, value: int) -> None:
        self._values[name] = value

    def __dir__(self):
        return list(self._knobs) + list(super().__dir__())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._values})"


class KhugepagedSettings(KnobGroup):
    _knobs = {
        "defrag": Flag01(),
        "max_ptes_none": UInt(0, 511),
        "max_ptes_swap": UInt(0, 511),
        "max_ptes_shared": UInt(0, 511),
        "pages_to_scan": UInt(1, U32_MAX),
        "scan_sleep_millisecs": UInt(0, U32_MAX),
        "alloc_sleep_millisecs": UInt(0, U32_MAX),
        "full_scans": ReadOnly(),
        "pages_collapsed": ReadOnly(),
    }

    def __init__(self, on_change=None, defrag: int = 1):
        super().__init__(on_change, "khugepaged/")
        self._values.update(defrag=defrag, max_ptes_none=511, max_ptes_swap=64,
                            max_ptes_shared=256, pages_to_scan=4096,
                            scan_sleep_millisecs=10000, alloc_sleep_millisecs=60000,
                            full_scans=0, pages_collapsed=0)


class PerSizeSettings(KnobGroup):
    """hugepages-<size>kB/: the PMD size inherits the global knobs by default, the smaller
    (mTHP) sizes start at never."""
    _knobs = {"enabled": Choice(PER_SIZE_ENABLED_WORDS),
              "shmem_enabled": Choice(PER_SIZE_SHMEM_WORDS)}

    def __init__(self, on_change=None, prefix: str = "hugepages-2048kB/", order: int = PMD_ORDER):
        super().__init__(on_change, prefix)
        default = "inherit" if order == PMD_ORDER else "never"
        self._values.update(enabled=default, shmem_enabled=default)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "stats", {name: 0 for name in MTHP_STAT_NAMES})


class ShmemOnlySizeSettings(PerSizeSettings):
    """A size only shmem/file folios have (order 1): no anonymous `enabled` knob."""
    _knobs = {"shmem_enabled": Choice(PER_SIZE_SHMEM_WORDS)}

    def __init__(self, on_change=None, prefix: str = "hugepages-8kB/", order: int = 1):
        super().__init__(on_change, prefix, order)
        del self._values["enabled"]


class ThpSettings(KnobGroup):
    """/sys/kernel/mm/transparent_hugepage, typed: the global knobs, khugepaged/, and one
    hugepages-<size>kB/ group per folio size (`m.thp.hugepages_64kB.enabled = "always"`)."""

    _knobs = {
        "enabled": Choice(ENABLED_WORDS),
        "defrag": Choice(DEFRAG_WORDS),
        "use_zero_page": Flag01(),
        "shrink_underused": Bool(),
        "shmem_enabled": Choice(SHMEM_WORDS),
        "hpage_pmd_size": ReadOnly(),
    }

    def __init__(self, on_change=None, enabled: str = "madvise", small_machine: bool = False):
        super().__init__(on_change, "")
        if small_machine:
            # hugepage_init(): below 512 MiB of RAM every THP flag starts cleared.
            self._values.update(enabled="never", defrag="never", use_zero_page=0)
        else:
            self._values.update(enabled=ENABLED_WORDS[ENABLED_WORDS.index(enabled)],
                                defrag="madvise", use_zero_page=1)
        self._values.update(shrink_underused=1, shmem_enabled="never", hpage_pmd_size=2 << 20)
        object.__setattr__(self, "khugepaged",
                           KhugepagedSettings(on_change, defrag=0 if small_machine else 1))
        sizes = {}
        for order in SHMEM_ONLY_ORDERS + ANON_ORDERS:
            cls = ShmemOnlySizeSettings if order in SHMEM_ONLY_ORDERS else PerSizeSettings
            sizes[order] = cls(on_change, size_dir(order) + "/", order)
            object.__setattr__(self, size_dir(order).replace("-", "_"), sizes[order])
        object.__setattr__(self, "sizes", sizes)
        # kernel-provided reader of the gauges (nr_anon...): (order, name) -> int
        object.__setattr__(self, "gauge", None)

    def per_size(self, order: int) -> PerSizeSettings:
        return self.sizes[order]

    def pmd_enabled(self) -> bool:
        """hugepage_pmd_enabled(): is PMD-size anon THP on for anyone (khugepaged runs)?"""
        per_size = self.hugepages_2048kB.enabled
        if per_size in ("always", "madvise"):
            return True
        return per_size == "inherit" and self.enabled in ("always", "madvise")

    def stat(self, order: int, name: str) -> int:
        if name in MTHP_GAUGES and self.gauge is not None:
            return int(self.gauge(order, name))
        return self.sizes[order].stats[name]


class Sysfs:
    """Path-level access: m.sysfs.read(path) / m.sysfs.write(path, text), kernel texts."""

    def __init__(self, thp: ThpSettings, cgroups=None):
        self.thp = thp
        self.cgroups = cgroups
        self._files: dict[str, tuple[KnobGroup, str, Knob]] = {}
        self._dirs: dict[str, list[str]] = {}
        self._add_group(THP_ROOT, thp)
        self._add_group(THP_ROOT + "/khugepaged", thp.khugepaged)
        self._dirs[THP_ROOT].append("khugepaged")
        self._stats_dirs: dict[str, tuple[int, tuple[str, ...]]] = {}
        for order, group in thp.sizes.items():
            per_size = f"{THP_ROOT}/{size_dir(order)}"
            self._add_group(per_size, group)
            names = SHMEM_ONLY_STAT_NAMES if order in SHMEM_ONLY_ORDERS else MTHP_STAT_NAMES
            self._dirs[per_size + "/stats"] = list(names)
            self._stats_dirs[per_size + "/stats"] = (order, names)
            self._dirs[THP_ROOT].append(size_dir(order))
            self._dirs[per_size].append("stats")
        for d in ("/sys", "/sys/kernel", "/sys/kernel/mm"):
            self._dirs[d] = []
        self._dirs["/sys"].append("kernel")
        self._dirs["/sys/kernel"].append("mm")
        self._dirs["/sys/kernel/mm"].append("transparent_hugepage")

    def _add_group(self, directory: str, group: KnobGroup) -> None:
        self._dirs[directory] = []
        for name, knob in group._knobs.items():
            self._files[f"{directory}/{name}"] = (group, name, knob)
            self._dirs[directory].append(name)

    @staticmethod
    def _normalize(path: str) -> str:
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        return posixpath.normpath(path) if path else path

    def listdir(self, path: str) -> list[str]:
        path = self._normalize(path)
        if path in self._dirs:
            return sorted(self._dirs[path])
        if path in self._files:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    def exists(self, path: str) -> bool:
        path = self._normalize(path)
        return path in self._files or path in self._dirs

    def _cgroup_file(self, path: str):
        if self.cgroups is None or not path.startswith("/sys/fs/cgroup/"):
            return None
        return self.cgroups.paths().get(path)

    def read(self, path: str) -> str:
        path = self._normalize(path)
        cg = self._cgroup_file(path)
        if cg is not None:
            return self.cgroups.read(*cg)
        if path in self._files:
            group, name, knob = self._files[path]
            return knob.render(getattr(group, name))
        stats = self._stats_dirs.get(posixpath.dirname(path))
        if stats is not None and posixpath.basename(path) in stats[1]:
            return f"{self.thp.stat(stats[0], posixpath.basename(path))}\n"
        if path in self._dirs:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    def write(self, path: str, data: str | bytes) -> int:
        """write(2) to a sysfs file; returns the byte count the kernel would return."""
        path = self._normalize(path)
        if isinstance(data, str):
            data = data.encode("utf-8")
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("latin-1")     # one char per byte, so len() counts bytes
        else:
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        cg = self._cgroup_file(path)
        if cg is not None:
            data = data[:KERNFS_MAX_WRITE]
            return self.cgroups.write(cg[0], cg[1], data) if data else 0
        if path in self._dirs:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if path not in self._files:
            stats = self._stats_dirs.get(posixpath.dirname(path))
            if stats is not None and posixpath.basename(path) in stats[1]:
                raise PermissionError(errno.EACCES, "Permission denied", path)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        group, name, knob = self._files[path]
        if knob.readonly:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        data = data[:KERNFS_MAX_WRITE]
        if not data:
            return 0
        try:
            value = knob.parse(data)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None
        group._store(name, value)
        return len(data)
