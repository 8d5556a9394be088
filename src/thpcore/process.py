"""Tasks: credentials, the mm, and the system calls a simulated process makes."""

from __future__ import annotations

import errno
import functools
from typing import TYPE_CHECKING

import numpy as np

import thpcore._engine as _engine
from thpcore.constants import (MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PR_GET_THP_DISABLE,
                               PR_SET_THP_DISABLE, PR_THP_DISABLE_EXCEPT_ADVISED, PROT_READ, PROT_WRITE)
from thpcore.errors import SegmentationFault, int_arg
from thpcore.mm.fork import dup_mm
from thpcore.mm.madvise import _set_vma_flags, do_madvise, process_madvise
from thpcore.mm.memory import handle_mm_fault_range, populate
from thpcore.mm.mm_types import MM
from thpcore.mm.mmap import do_mmap, do_mprotect, do_munmap, exit_mmap
from thpcore.mm.mremap import do_mremap
from thpcore.mm.vma import PAGE_SIZE, TASK_SIZE, VM_LOCKED, VM_READ, VM_WRITE
from thpcore.proc.task_mmu import smaps_entries, smaps_rollup

if TYPE_CHECKING:
    from thpcore.machine import Machine
    from thpcore.mm.memcontrol import MemCgroup

CAPABILITIES = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
})


PIDFD_NONBLOCK = 0o4000
PIDFD_THREAD = 0o200


def _syscall(fn):
    """Run a system call of this process with its pid as the actor charged for the work."""
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        m = self.machine
        saved = m.actor
        m.actor = self.pid
        try:
            return fn(self, *args, **kwargs)
        finally:
            m.actor = saved
    return call


class Process:
    """A simulated task with its own mm. Created by Machine.spawn() or Process.fork()."""

    def __init__(self, machine: "Machine", pid: int, name: str, uid: int, caps: frozenset[str],
                 mm: MM | None = None, parent: "Process | None" = None):
        self.machine = machine
        self.pid = pid
        self.name = name
        self.uid = uid
        self.caps = caps
        self.mm = mm if mm is not None else MM(machine)
        self.parent = parent
        self.alive = True
        self.exit_reason: str | None = None
        self.fds: dict[int, "Process"] = {}
        self._next_fd = 3
        self.priority = 0.0              # a scheduling weight policies may use (higher first)
        self.memcg: "MemCgroup"          # set by Machine.spawn (also mm.memcg)

    def __repr__(self) -> str:
        state = "" if self.alive else f", exited ({self.exit_reason})"
        return f"Process(pid={self.pid}, name={self.name!r}, uid={self.uid}{state})"

    def _live(self) -> MM:
        if not self.alive:
            raise ProcessLookupError(errno.ESRCH, f"No such process: {self.pid} has exited")
        return self.mm

    # ---- mappings ----------------------------------------------------------------------------

    @_syscall
    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, addr: int | None = None) -> int:
        """mmap(2) of private anonymous memory; returns the address."""
        mm = self._live()
        length, prot, flags = int_arg(length, "length"), int_arg(prot, "prot"), int_arg(flags, "flags")
        if addr is not None:
            addr = int_arg(addr, "addr")
        start = do_mmap(self.machine, mm, length, prot, flags, addr)
        if flags & MAP_POPULATE:
            vma = mm.vmas.find(start)
            populate(self.machine, mm, vma, start, start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)),
                                  write=bool(vma.flags & VM_WRITE))
        return start

    @_syscall
    def munmap(self, addr: int, length: int) -> None:
        do_munmap(self.machine, self._live(), int_arg(addr, "addr"), int_arg(length, "length"))

    @_syscall
    def mremap(self, old_address: int, old_size: int, new_size: int, flags: int = 0,
               new_address: int = 0) -> int:
        """mremap(2) of private anonymous memory; returns the address the mapping now has.
        Raises OSError with the kernel's errno (EINVAL, EFAULT, ENOMEM)."""
        return do_mremap(self.machine, self._live(), int_arg(old_address, "old_address"),
                         int_arg(old_size, "old_size"), int_arg(new_size, "new_size"),
                         int_arg(flags, "flags"), int_arg(new_address, "new_address"))

    @_syscall
    def mprotect(self, addr: int, length: int, prot: int) -> None:
        do_mprotect(self.machine, self._live(), int_arg(addr, "addr"), int_arg(length, "length"),
                    int_arg(prot, "prot"))

    @_syscall
    def madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise(2); raises OSError with the kernel's errno."""
        do_madvise(self.machine, self._live(), int_arg(addr, "addr"), int_arg(length, "length"),
                   int_arg(advice, "advice"), pid=self.pid)

    # ---- memory access -----------------------------------------------------------------------

    def _access_range(self, addr: int, length: int, need: int) -> list[tuple]:
        """Validate that the whole range is accessible; returns (vma, lo, hi) pieces."""
        mm = self._live()
        addr, length = int_arg(addr, "addr"), int_arg(length, "length")
        if length < 0:
            raise ValueError("length must not be negative")
        if length == 0:
            return []
        start = addr & ~(PAGE_SIZE - 1)
        end = (addr + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if start < 0 or end > TASK_SIZE:
            raise SegmentationFault(addr, "address outside the user address space")
        pieces, pos = [], start
        for vma in mm.vmas.overlapping(start, end):
            if vma.start > pos:
                raise SegmentationFault(pos, "unmapped address")
            if vma.flags & need != need:
                raise SegmentationFault(max(pos, vma.start), "protection forbids the access")
            pieces.append((vma, pos, min(end, vma.end)))
            pos = min(end, vma.end)
        if pos < end:
            raise SegmentationFault(pos, "unmapped address")
        guard = mm.first_guard(start, end)
        if guard is not None:
            raise SegmentationFault(guard, "guard region")
        return pieces

    @_syscall
    def write(self, addr: int, length: int, value: int | None = None) -> None:
        """Write every page of the range (storing `value`, or fresh non-zero content words)."""
        if value is not None:
            value = int_arg(value, "value")
            if not 0 <= value <= 0xFFFFFFFF:
                raise ValueError("value must fit in 32 bits (a content word)")
        pieces = self._access_range(addr, length, VM_WRITE)
        m = self.machine
        if value is None:
            mode, word = _engine.PY_VALUE_GENERATED, m.next_write_generation()
        else:
            mode, word = _engine.PY_VALUE_CONSTANT, value
        for vma, lo, hi in pieces:
            handle_mm_fault_range(m, self.mm, vma, lo, hi, True, mode, word, None)

    @_syscall
    def read(self, addr: int, length: int) -> np.ndarray:
        """Read every page of the range; returns one content word per page (0 = zeroes)."""
        pieces = self._access_range(addr, length, VM_READ)
        if not pieces:
            return np.zeros(0, dtype=np.uint32)
        out = np.zeros((pieces[-1][2] - pieces[0][1]) // PAGE_SIZE, dtype=np.uint32)
        base = pieces[0][1]
        for vma, lo, hi in pieces:
            seg = out[(lo - base) // PAGE_SIZE:(hi - base) // PAGE_SIZE]
            handle_mm_fault_range(self.machine, self.mm, vma, lo, hi, False, 0, 0, seg)
        return out

    # ---- pidfds and process_madvise -----------------------------------------------------------

    def pidfd_open(self, pid: int, flags: int = 0) -> int:
        """pidfd_open(2): a pidfd for a live process (no permission check at open time)."""
        self._live()
        pid, flags = int_arg(pid, "pid"), int_arg(flags, "flags")
        if flags & ~(PIDFD_NONBLOCK | PIDFD_THREAD) or pid <= 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        target = self.machine._processes.get(pid)
        if target is None or not target.alive:
            raise ProcessLookupError(errno.ESRCH, f"No such process: {pid}")
        fd = self._next_fd
        self._next_fd += 1
        self.fds[fd] = target
        return fd

    def close(self, fd: int) -> None:
        self._live()
        if self.fds.pop(int_arg(fd, "fd"), None) is None:
            raise OSError(errno.EBADF, "Bad file descriptor")

    @_syscall
    def process_madvise(self, pidfd: int, iovecs, advice: int, flags: int = 0) -> int:
        """process_madvise(2): returns the bytes of the iovecs fully advised."""
        return process_madvise(self.machine, self, pidfd, iovecs, advice, flags)

    # ---- process control ---------------------------------------------------------------------

    @_syscall
    def fork(self) -> "Process":
        """fork(2): a child with a copy-on-write copy of the address space."""
        mm = self._live()
        child = self.machine.spawn(name=self.name, uid=self.uid, caps=self.caps,
                                   cgroup=self.memcg.path)
        child.parent = self
        dup_mm(self.machine, mm, child.mm)
        return child

    def _mlock_range(self, addr: int, length: int) -> tuple[MM, int, int]:
        """mlock/munlock argument rules: page-rounded, fully mapped, else ENOMEM."""
        mm = self._live()
        addr, length = int_arg(addr, "addr"), int_arg(length, "length")
        start = addr & ~(PAGE_SIZE - 1)
        end = (addr + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if end < start or end > TASK_SIZE:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        if end > start and not mm.vmas.covered(start, end):
            raise OSError(errno.ENOMEM, "Cannot allocate memory: range not fully mapped")
        return mm, start, end

    @_syscall
    def mlock(self, addr: int, length: int) -> None:
        """mlock(2): lock the VMAs of the range and populate them (write faults where writable)."""
        mm, start, end = self._mlock_range(addr, length)
        for vma in mm.vmas.overlapping(start, end):
            _set_vma_flags(self.machine, mm, vma, max(start, vma.start), min(end, vma.end),
                           VM_LOCKED, 0)
        for vma in mm.vmas.overlapping(start, end):
            if vma.flags & (VM_READ | VM_WRITE):
                try:
                    populate(self.machine, mm, vma, max(start, vma.start), min(end, vma.end),
                                          write=bool(vma.flags & VM_WRITE))
                except SegmentationFault:
                    # A guard region: __mlock_posix_error_return() turns EFAULT into ENOMEM
                    # (the VMAs stay locked, as in the kernel).
                    raise OSError(errno.ENOMEM, "Cannot allocate memory: mlock ran into a "
                                  "guard region") from None

    @_syscall
    def munlock(self, addr: int, length: int) -> None:
        mm, start, end = self._mlock_range(addr, length)
        for vma in mm.vmas.overlapping(start, end):
            _set_vma_flags(self.machine, mm, vma, max(start, vma.start), min(end, vma.end),
                           0, VM_LOCKED)

    @_syscall
    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        mm = self._live()
        option = int_arg(option, "option")
        if option == PR_SET_THP_DISABLE:
            if arg4 or arg5:
                raise OSError(errno.EINVAL, "Invalid argument")
            if arg2:
                if arg3 & ~PR_THP_DISABLE_EXCEPT_ADVISED:
                    raise OSError(errno.EINVAL, "Invalid argument: unknown flags")
                mm.thp_disable = 1 + arg3
            else:
                if arg3:
                    raise OSError(errno.EINVAL, "Invalid argument")
                mm.thp_disable = 0
            return 0
        if option == PR_GET_THP_DISABLE:
            if arg2 or arg3 or arg4 or arg5:
                raise OSError(errno.EINVAL, "Invalid argument")
            if not mm.thp_disable:
                return 0
            return 1 | (mm.thp_disable - 1)
        raise OSError(errno.EINVAL, f"Invalid argument: prctl option {option} is not modelled")

    @_syscall
    def exit(self) -> None:
        """do_exit(): exit_mmap() (unmap everything, free the page tables, leave khugepaged's
        list), close the pidfds."""
        exit_mmap(self.machine, self._live())
        self.fds.clear()
        self.alive = False
        self.exit_reason = self.exit_reason or "exit"

    # ---- views ---------------------------------------------------------------------------------

    def smaps(self) -> list[dict]:
        return smaps_entries(self.machine, self._live())

    def smaps_rollup(self) -> dict[str, int]:
        """/proc/PID/smaps_rollup as a dict of kB (and THPeligible-free fields)."""
        return smaps_rollup(self.machine, self._live())
