"""The THP sysfs knobs under /sys/kernel/mm/transparent_hugepage: read, write, set for a block
and restore (``thp_settings``), under a machine-wide lock so that two test runs never snapshot
each other's temporary values."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile

from thpcore.live.host import THP_ROOT, _read


def _knob_path(name: str) -> str:
    rel = name.replace("__", "/")
    if rel.startswith("hugepages_"):       # hugepages_2048kB/enabled -> hugepages-2048kB/enabled
        rel = "hugepages-" + rel[len("hugepages_"):]
    path = os.path.normpath(os.path.join(THP_ROOT, rel))
    if not path.startswith(THP_ROOT + "/"):
        raise ValueError(f"knob {name!r} is outside {THP_ROOT}")
    return path


def read_knob(name: str) -> str:
    """Current value of a THP knob: the bracketed word for selectors, else the stripped text."""
    text = _read(_knob_path(name)).strip()
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def write_knob(name: str, value) -> None:
    if isinstance(value, bool):
        value = int(value)
    with open(_knob_path(name), "w") as f:
        f.write(str(value))


LOCK_PATH = os.path.join(tempfile.gettempdir(), "thpcore-live-knobs.lock")


@contextlib.contextmanager
def knob_lock():
    """An exclusive, machine-wide lock for the duration of a knob change, so two test runs on
    one machine (a CI run beside a developer's) never snapshot each other's temporary values."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def thp_settings(**knobs):
    """Set THP sysfs knobs for the duration of the block and restore them afterwards.

    ``with thp_settings(enabled="always", use_zero_page=0, **{"khugepaged/max_ptes_none": 0}):``

    The old value of each knob is saved just before it is written, knobs are restored in
    reverse order even when a write or the body raises, and a failed restore is re-raised
    (after trying all the others).  Yields {knob: old value}.
    """
    saved: list[tuple[str, str]] = []
    lock = knob_lock()
    lock.__enter__()
    try:
        for name, value in knobs.items():
            old = read_knob(name)
            saved.append((name, old))
            write_knob(name, value)
        yield dict(saved)
    finally:
        errors = []
        for name, old in reversed(saved):
            try:
                write_knob(name, old)
            except OSError as e:  # keep restoring the others
                errors.append(f"{name}={old!r}: {e}")
        lock.__exit__(None, None, None)
        if errors:
            raise RuntimeError("could not restore THP knobs: " + "; ".join(errors))


def thp_snapshot() -> dict[str, str]:
    """Values of the commonly changed knobs (for asserting that a test restored them)."""
    names = ["enabled", "defrag", "use_zero_page", "hugepages-2048kB/enabled"] + [
        f"khugepaged/{k}" for k in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared",
                                     "pages_to_scan", "scan_sleep_millisecs",
                                     "alloc_sleep_millisecs", "defrag")]
    out = {}
    for n in names:
        try:
            out[n] = read_knob(n)
        except OSError:
            pass
    return out
