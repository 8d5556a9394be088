"""Random sequences of mmap, munmap, mprotect, write, read, madvise, fork and exit across
several processes, with Machine.check() after every step and a model of every page's content."""

import errno

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import thpcore
from thpcore.mm.madvise import MADV_GUARD_INSTALL, MADV_GUARD_REMOVE
from thpcore import (MADV_POPULATE_READ, MADV_POPULATE_WRITE, MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE,
                     MADV_COLD, MADV_COLLAPSE, MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
                     MADV_PAGEOUT, PROT_NONE, PROT_READ, PROT_WRITE, SegmentationFault)

PAGE = 4096
MB = 1 << 20
ADVICE = [MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_DONTNEED, MADV_COLD, MADV_PAGEOUT, MADV_FREE, 0,
          MADV_COLLAPSE, MADV_POPULATE_READ, MADV_POPULATE_WRITE]


class ProcessMachine(RuleBasedStateMachine):
    """The model: for each live process, {page address: content word} of every page that holds
    data (absent = zeroes), and the pages MADV_FREE made lazyfree and nothing wrote since (they
    read as their content or, once reclaim discarded them, as zeroes)."""

    @initialize(enabled=st.sampled_from(["always", "madvise", "never"]),
                zero=st.booleans(), blockdev=st.booleans())
    def boot(self, enabled, zero, blockdev):
        self.m = thpcore.Machine("128M", swap="16M", seed=0, transparent_hugepage=enabled,
                                 swap_device="blockdev" if blockdev else "file")
        self.m.thp.enabled = enabled
        self.m.thp.use_zero_page = int(zero)
        self.procs = {}
        self.content = {}
        self.lazy = {}           # pid -> addresses of lazyfree pages
        self.guards = {}         # pid -> addresses holding a guard marker (access: SIGSEGV)
        self.areas = {}          # pid -> list of (addr, length)
        self._spawn()

    def _spawn(self):
        p = self.m.spawn()
        self.procs[p.pid] = p
        self.content[p.pid] = {}
        self.lazy[p.pid] = set()
        self.guards[p.pid] = set()
        self.areas[p.pid] = []
        return p

    def _pick(self, data):
        pid = data.draw(st.sampled_from(sorted(self.procs)))
        return self.procs[pid]

    def _range(self, data, p):
        addr, length = data.draw(st.sampled_from(self.areas[p.pid]))
        lo = data.draw(st.integers(0, length // PAGE - 1))
        n = data.draw(st.integers(1, length // PAGE - lo))
        return addr + lo * PAGE, n * PAGE

    @precondition(lambda self: len(self.procs) < 4)
    @rule()
    def spawn(self):
        self._spawn()

    @rule(data=st.data(), pages=st.sampled_from([1, 7, 512, 513, 1024, 1536]))
    def mmap(self, data, pages):
        p = self._pick(data)
        addr = p.mmap(pages * PAGE)
        self.areas[p.pid].append((addr, pages * PAGE))

    @precondition(lambda self: any(self.areas.values()))
    @rule(data=st.data(), value=st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)))
    def write(self, data, value):
        p = self._pick(data)
        if not self.areas[p.pid]:
            return
        addr, length = self._range(data, p)
        guarded = any(a in self.guards[p.pid] for a in range(addr, addr + length, PAGE))
        try:
            p.write(addr, length, value)
        except SegmentationFault:
            return          # mprotect'ed, unmapped or guarded part: nothing changed
        assert not guarded, "a write through a guard marker succeeded"
        words = p.read(addr, length) if value is None else None
        for i in range(length // PAGE):
            self.lazy[p.pid].discard(addr + i * PAGE)
            w = value if value is not None else int(words[i])
            if w:
                self.content[p.pid][addr + i * PAGE] = w
            else:
                self.content[p.pid].pop(addr + i * PAGE, None)

    @precondition(lambda self: any(self.areas.values()))
    @rule(data=st.data())
    def read(self, data):
        p = self._pick(data)
        if not self.areas[p.pid]:
            return
        addr, length = self._range(data, p)
        guarded = any(a in self.guards[p.pid] for a in range(addr, addr + length, PAGE))
        try:
            words = p.read(addr, length)
        except SegmentationFault:
            return
        assert not guarded, "a read through a guard marker succeeded"
        for i in range(length // PAGE):
            a = addr + i * PAGE
            if a in self.lazy[p.pid] and int(words[i]) == 0:
                self.content[p.pid].pop(a, None)        # discarded by reclaim
            assert int(words[i]) == self.content[p.pid].get(a, 0), hex(a)

    @precondition(lambda self: any(self.areas.values()))
    @rule(data=st.data(), advice=st.sampled_from(ADVICE))
    def madvise(self, data, advice):
        p = self._pick(data)
        if not self.areas[p.pid]:
            return
        addr, length = self._range(data, p)
        try:
            p.madvise(addr, length, advice)
        except OSError as e:
            # EFAULT: MADV_POPULATE_* ran into a guard region
            assert e.errno in (errno.ENOMEM, errno.EINVAL, errno.EAGAIN, errno.EBUSY, errno.EFAULT)
        if advice == MADV_FREE:
            self.lazy[p.pid].update(range(addr, addr + length, PAGE))
        if advice == MADV_DONTNEED:
            for a in range(addr, addr + length, PAGE):
                if p.mm.vmas.find(a) is not None and not p.mm.vmas.find(a).flags & 0x2000:
                    self.content[p.pid].pop(a, None)

    @precondition(lambda self: any(self.areas.values()))
    @rule(data=st.data(), prot=st.sampled_from([PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE]))
    def mprotect(self, data, prot):
        p = self._pick(data)
        if not self.areas[p.pid]:
            return
        addr, length = self._range(data, p)
        try:
            p.mprotect(addr, length, prot)
        except OSError as e:
            assert e.errno == errno.ENOMEM

    @precondition(lambda self: any(self.areas.values()))
    @rule(data=st.data())
    def munmap(self, data):
        p = self._pick(data)
        if not self.areas[p.pid]:
            return
        addr, length = self._range(data, p)
        p.munmap(addr, length)
        for a in range(addr, addr + length, PAGE):
            self.content[p.pid].pop(a, None)
            self.lazy[p.pid].discard(a)
            self.guards[p.pid].discard(a)

    @precondition(lambda self: any(self.areas.values()))
    @rule(data=st.data(), install=st.booleans())
    def guard(self, data, install):
        p = self._pick(data)
        if not self.areas[p.pid]:
            return
        addr, length = self._range(data, p)
        try:
            p.madvise(addr, length, MADV_GUARD_INSTALL if install else MADV_GUARD_REMOVE)
        except OSError as e:
            assert e.errno in (errno.ENOMEM, errno.EINVAL), e
            if e.errno == errno.ENOMEM:
                # Partly unmapped: the mapped VMAs were still handled (madvise goes on).
                for a in range(addr, addr + length, PAGE):
                    if p.mm.vmas.find(a) is not None:
                        self._guard_page(p, a, install)
            return
        for a in range(addr, addr + length, PAGE):
            self._guard_page(p, a, install)

    def _guard_page(self, p, a, install):
        if install:
            self.content[p.pid].pop(a, None)
            self.lazy[p.pid].discard(a)
            self.guards[p.pid].add(a)
        else:
            self.guards[p.pid].discard(a)
    @rule(data=st.data(), kind=st.sampled_from(["shrink", "same", "grow", "grow_move", "fixed",
                                                "fixed_unaligned", "dontunmap"]))
    def mremap(self, data, kind):
        p = self._pick(data)
        if not self.areas[p.pid]:
            return
        addr, length = self._range(data, p)
        new_len = {"shrink": max(PAGE, length // 2 // PAGE * PAGE), "same": length,
                   "dontunmap": length}.get(kind, length + data.draw(st.sampled_from([PAGE, 2 * MB])))
        flags, new_addr = 0, 0
        if kind in ("grow_move", "fixed", "fixed_unaligned", "dontunmap"):
            flags = MREMAP_MAYMOVE
        if kind.startswith("fixed"):
            flags |= MREMAP_FIXED
            new_addr = 0x600000000000 + data.draw(st.integers(0, 7)) * 2 * MB \
                + (PAGE if kind == "fixed_unaligned" else 0)
        if kind == "dontunmap":
            flags |= MREMAP_DONTUNMAP
        content, lazy, guards = self.content[p.pid], self.lazy[p.pid], self.guards[p.pid]

        def drop(lo, hi):
            for a in range(lo, hi, PAGE):
                content.pop(a, None)
                lazy.discard(a)
                guards.discard(a)
        try:
            res = p.mremap(addr, length, new_len, flags, new_addr)
        except OSError as e:
            assert e.errno in (errno.EINVAL, errno.EFAULT, errno.ENOMEM), e
            if e.errno == errno.EFAULT and flags & MREMAP_FIXED:
                drop(new_addr, new_addr + new_len)       # mremap_to unmapped these first
                if length > new_len:
                    drop(addr + new_len, addr + length)
            return
        keep = min(length, new_len)
        if res != addr:
            moved = {a: content[a] for a in range(addr, addr + keep, PAGE) if a in content}
            moved_lazy = {a for a in range(addr, addr + keep, PAGE) if a in lazy}
            moved_guards = {a for a in range(addr, addr + keep, PAGE) if a in guards}
            drop(res, res + new_len)
            drop(addr, addr + length)
            for a, w in moved.items():
                content[res + a - addr] = w
            lazy.update(res + a - addr for a in moved_lazy)
            guards.update(res + a - addr for a in moved_guards)
        elif length > new_len:
            drop(addr + new_len, addr + length)
        self.areas[p.pid].append((res, new_len))

    @precondition(lambda self: len(self.procs) < 4)
    @rule(data=st.data())
    def fork(self, data):
        p = self._pick(data)
        c = p.fork()
        self.procs[c.pid] = c
        self.content[c.pid] = dict(self.content[p.pid])
        self.lazy[c.pid] = set(self.lazy[p.pid])
        self.guards[c.pid] = set(self.guards[p.pid])
        self.areas[c.pid] = list(self.areas[p.pid])

    @rule(ms=st.sampled_from([0, 10, 1000]), none=st.sampled_from([0, 64, 511]))
    def khugepaged(self, ms, none):
        self.m.thp.khugepaged.max_ptes_none = none
        self.m.thp.khugepaged.scan_sleep_millisecs = 10
        self.m.run(ms=ms)

    @rule(want=st.sampled_from([32, 512, 4096]))
    def reclaim(self, want):
        from thpcore.mm.vmscan import shrink_node
        shrink_node(self.m, want)                    # shrinker + CLOCK; contents must survive

    @rule()
    def compact(self):
        self.m.procfs.write("/proc/sys/vm/compact_memory", "1")

    @precondition(lambda self: len(self.procs) > 1)
    @rule(data=st.data())
    def exit(self, data):
        p = self._pick(data)
        p.exit()
        del self.procs[p.pid], self.content[p.pid], self.areas[p.pid], self.lazy[p.pid]
        del self.guards[p.pid]

    @invariant()
    def consistent(self):
        self.m.check()

    def teardown(self):
        for p in list(self.procs.values()):
            p.exit()
        self.m.check()
        zero = 0 if self.m.huge_zero_pfn is None else 512
        assert self.m.page_alloc.zone.nr_free_pages == self.m.nr_pages - zero
        assert self.m.page_tables.swap_used == 0


TestProcessMachine = ProcessMachine.TestCase
TestProcessMachine.settings = settings(max_examples=80, stateful_step_count=30, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow,
                                                              HealthCheck.filter_too_much])
