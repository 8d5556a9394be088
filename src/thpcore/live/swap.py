"""Swap files for live tests: ``swap_file(size)`` makes one in a fresh temporary directory,
mkswaps and swapons it at a high priority, and swapoffs and deletes it on exit."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import tempfile

from thpcore.live.features import Unsupported
from thpcore.live.host import PAGE_SIZE, MiB
from thpcore.live.syscalls import _libc

# <linux/swap.h>
SWAP_FLAG_PREFER = 0x8000
SWAP_FLAG_PRIO_MASK = 0x7FFF


@contextlib.contextmanager
def swap_file(size_bytes: int, priority: int = 32767, directory: str | None = None):
    """Create a swap file of size_bytes in a new temporary directory, mkswap it and swapon it
    with the given priority; yield its path; swapoff and delete it on exit (also on error).

    Raises Unsupported if mkswap is missing, we are not root, or swapon fails.
    """
    if os.geteuid() != 0:
        raise Unsupported("swap_file needs root")
    mkswap = shutil.which("mkswap") or next(
        (p for p in ("/usr/sbin/mkswap", "/sbin/mkswap") if os.path.exists(p)), None)
    if mkswap is None:
        raise Unsupported("mkswap not found")
    size_bytes = max(size_bytes // PAGE_SIZE, 16) * PAGE_SIZE
    tmpdir = tempfile.mkdtemp(prefix="thpcore-swap-", dir=directory)
    path = os.path.join(tmpdir, "swapfile")
    active = False
    try:
        # write real zeros: swapon refuses files with holes / unwritten extents on some fs
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            chunk = b"\0" * (4 * MiB)
            left = size_bytes
            while left:
                left -= os.write(fd, chunk[:min(left, len(chunk))])
            os.fsync(fd)
        finally:
            os.close(fd)
        r = subprocess.run([mkswap, path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        if r.returncode != 0:
            raise Unsupported(f"mkswap failed: {r.stdout.strip()}")
        flags = SWAP_FLAG_PREFER | (priority & SWAP_FLAG_PRIO_MASK)
        ctypes.set_errno(0)
        if _libc.swapon(path.encode(), flags) != 0:
            e = ctypes.get_errno()
            raise Unsupported(f"swapon({path}) failed: {os.strerror(e)}")
        active = True
        yield path
    finally:
        try:
            if active:
                ctypes.set_errno(0)
                if _libc.swapoff(path.encode()) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"swapoff({path}) failed: {os.strerror(e)}")
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
