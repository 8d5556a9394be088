"""The live host's geometry and the THP sysfs root, read once at import (page size from
sysconf, PMD size from hpage_pmd_size), and the small text-file reader the other live modules
share."""

from __future__ import annotations

import os

from thpcore.mm.sysfs import THP_ROOT  # noqa: F401  (re-exported: thpcore.live.THP_ROOT)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _read_pmd_size() -> int:
    try:
        with open(f"{THP_ROOT}/hpage_pmd_size") as f:
            return int(f.read())
    except OSError:
        return 2 * MiB


HPAGE_PMD_SIZE = _read_pmd_size()
HPAGE_PMD_NR = HPAGE_PMD_SIZE // PAGE_SIZE


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()
