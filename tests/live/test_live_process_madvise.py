"""process_madvise() and pidfd_open() on the live kernel (a child of this test as the target)
and in the simulator: return values and errno, case by case."""

import ctypes
import errno
import os

import pytest

import thpcore
from thpcore import MADV_COLLAPSE, MADV_DONTNEED

pytestmark = pytest.mark.live
lh = pytest.importorskip("live_harness")
HP = 2 << 20
SYS_pidfd_open, SYS_process_madvise = 434, 440


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def live_process_madvise(pidfd, vec, advice, flags=0):
    libc = ctypes.CDLL(None, use_errno=True)
    arr = (IoVec * max(len(vec), 1))(*[IoVec(a, n) for a, n in vec])
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(SYS_process_madvise, pidfd, arr, ctypes.c_size_t(len(vec)), advice,
                      ctypes.c_uint(flags))
    return -ctypes.get_errno() if rc < 0 else rc


def live_pidfd_open(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_pidfd_open, pid, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    return fd


def target(chan):
    r = lh.Region.aligned(3 * HP)
    r.write(0, HP, value=1)
    r.write(2 * HP, 4096, value=2)
    chan.send(r.addr)
    chan.recv()                       # wait until the parent is done
    return r.smaps(partial="include")["AnonHugePages"]


CASES = [
    ("collapse", lambda a: [(a, HP)], MADV_COLLAPSE, 0),
    ("flags", lambda a: [(a, HP)], MADV_COLLAPSE, 1),
    ("too_many", lambda a: [(a, 0)] * 1025, MADV_COLLAPSE, 0),
    ("remote_dontneed", lambda a: [(a, HP)], MADV_DONTNEED, 0),
    ("unaligned", lambda a: [(a + 1, HP)], MADV_COLLAPSE, 0),
    ("second_fails", lambda a: [(a, HP), (a + HP, HP), (a + 2 * HP, HP)], MADV_COLLAPSE, 0),
    ("first_fails", lambda a: [(a + HP, HP), (a, HP)], MADV_COLLAPSE, 0),
]


def sim_case(vec_fn, advice, flags):
    m = thpcore.Machine("1G", seed=0)
    t = m.spawn()
    a = t.mmap(3 * HP)
    t.write(a, HP, value=1)
    t.write(a + 2 * HP, 4096, value=2)
    caller = m.spawn()
    fd = caller.pidfd_open(t.pid)
    try:
        rc = caller.process_madvise(fd, vec_fn(a), advice, flags)
    except OSError as e:
        rc = -e.errno
    m.check()
    return rc, t.smaps_rollup()["AnonHugePages"]


@pytest.mark.parametrize("name, vec_fn, advice, flags", CASES)
def test_process_madvise_matches_the_live_kernel(name, vec_fn, advice, flags):
    if os.geteuid() != 0 or not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"):
        pytest.skip("needs root and THP")
    with lh.thp_settings(enabled="never"):
        with lh.ForkedChild(target) as child:
            addr = child.recv()
            fd = live_pidfd_open(child.pid)
            try:
                rc = live_process_madvise(fd, vec_fn(addr), advice, flags)
            finally:
                os.close(fd)
            child.send("done")
            live = (rc, child.join())
        assert live == sim_case(vec_fn, advice, flags)


def test_pidfd_of_an_exited_process_is_esrch():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    fd = live_pidfd_open(pid)
    os.waitpid(pid, 0)
    try:
        live = live_process_madvise(fd, [(0, 4096)], MADV_COLLAPSE)
    finally:
        os.close(fd)
    m = thpcore.Machine("256M")
    t, caller = m.spawn(), m.spawn()
    sfd = caller.pidfd_open(t.pid)
    t.exit()
    with pytest.raises(OSError) as e:
        caller.process_madvise(sfd, [(0, 4096)], MADV_COLLAPSE)
    assert live == -e.value.errno == -errno.ESRCH


def test_unprivileged_caller_like_the_live_kernel():
    """A caller that setuid()s to nobody: collapsing itself needs nothing; a root-owned target
    fails the ptrace access check (EACCES) although pidfd_open succeeds."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges in a child")
    parent = os.getpid()

    def child():
        r = lh.Region.aligned(HP)
        r.write(0, HP, value=3)
        os.setgid(65534)
        os.setuid(65534)
        me = live_pidfd_open(os.getpid())
        root = live_pidfd_open(parent)
        return (live_process_madvise(me, [(r.addr, HP)], MADV_COLLAPSE),
                live_process_madvise(root, [(r.addr, HP)], MADV_COLLAPSE),
                r.smaps(partial="include")["AnonHugePages"])

    with lh.thp_settings(enabled="never"):
        live = lh.fork_and_run(child)

    m = thpcore.Machine("1G")
    root = m.spawn()
    nobody = m.spawn(uid=65534)
    a = nobody.mmap(HP)
    nobody.write(a, HP, value=3)
    me, other = nobody.pidfd_open(nobody.pid), nobody.pidfd_open(root.pid)
    self_rc = nobody.process_madvise(me, [(a, HP)], MADV_COLLAPSE)
    with pytest.raises(OSError) as e:
        nobody.process_madvise(other, [(a, HP)], MADV_COLLAPSE)
    sim = (self_rc, -e.value.errno, nobody.smaps_rollup()["AnonHugePages"])
    assert live == sim == (HP, -errno.EACCES, 2048)
