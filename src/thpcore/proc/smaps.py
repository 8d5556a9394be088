"""The one parser of /proc/PID/smaps and /proc/PID/smaps_rollup text, live or simulated
(fs/proc/task_mmu.c's format): the simulator's tests, thpcore.live, snapshots, thpmaps and
fidelity all read smaps through it."""

from __future__ import annotations

import re

_SMAPS_HDR = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")


def parse_smaps(text: str) -> list[dict]:
    """Parse /proc/<pid>/smaps text into a list of VMA records.

    Each record: start, end (ints), perms, offset, dev, inode, name, fields ({name: kB int}),
    VmFlags (list of two-letter flags), THPeligible (int or None), text (the verbatim lines).
    """
    vmas, cur = [], None
    for line in text.splitlines():
        m = _SMAPS_HDR.match(line)
        if m:
            cur = {"start": int(m.group(1), 16), "end": int(m.group(2), 16),
                   "perms": m.group(3), "offset": int(m.group(4), 16), "dev": m.group(5),
                   "inode": int(m.group(6)), "name": m.group(7), "fields": {},
                   "VmFlags": [], "THPeligible": None, "text": [line]}
            vmas.append(cur)
            continue
        if cur is None:
            continue
        cur["text"].append(line)
        key, _, rest = line.partition(":")
        rest = rest.strip()
        if key == "VmFlags":
            cur["VmFlags"] = rest.split()
        elif key == "THPeligible":
            cur["THPeligible"] = int(rest)
        elif rest.endswith(" kB"):
            cur["fields"][key] = int(rest[:-3])
        elif rest.lstrip("-").isdigit():
            cur["fields"][key] = int(rest)
    for v in vmas:
        v["text"] = "\n".join(v["text"]) + "\n"
    return vmas


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup text as {field: kB} (the header line is skipped)."""
    out = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        rest = rest.strip()
        if rest.endswith(" kB"):
            out[key] = int(rest[:-3])
    return out
