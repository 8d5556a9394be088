"""Operation traces: a text format for what processes do to their memory, a recorder that writes
a workload generator's stream out, and `thpcore replay`.

Format (UTF-8 text, one record per line; `#` starts a comment)::

    # thpcore-trace 1
    # machine memory=64G swap=8G seed=0         Machine(...) arguments (optional)
    # sysfs /sys/kernel/mm/transparent_hugepage/enabled always     a knob, before anything runs
    # fragment 0.0005 scattered                 workloads.fragment(), after the knobs
    # cgroup svc                                a memory cgroup to create
    TIME PID OP ARGS...

TIME is absolute simulated seconds (nanosecond precision, non-decreasing); before a record runs,
simulated time advances to TIME with the daemons (khugepaged, kcompactd, kswapd) running on the
way. PID is the trace's own label for a process (any token; "-" for machine-wide records). ADDR
and LEN are integers (0x hex allowed) or sizes like 2M. The operations:

    spawn NAME [CGROUP]        a new process labelled PID
    mmap ADDR LEN              private anonymous read/write mapping at exactly ADDR
    munmap ADDR LEN
    mremap ADDR OLDLEN NEWLEN [FLAGS [NEWADDR]]   FLAGS: MREMAP_* bits (1 maymove, 2 fixed,
                               4 dontunmap); a move without FIXED lands where it did when
                               recorded, since replay rebuilds the same address space
    madvise ADDR LEN ADVICE    ADVICE is a name (hugepage, dontneed, collapse, pageout, ...) or a number
    write ADDR LEN             touch every page for writing (faults, COW)
    read ADDR LEN
    fork CHILD                 the child is labelled CHILD
    exit
    sleep SECONDS              (PID "-") let SECONDS pass: the daemons run

A failing system call is part of the experiment, not an error of the trace: replay counts it by
errno, as the program would have seen it, and goes on. A malformed line is a ValueError naming it.
"""

from __future__ import annotations

import errno as errno_mod
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from thpcore import constants
from thpcore.constants import MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE
from thpcore.lab.workloads import fragment
from thpcore.machine import Machine
from thpcore.units import parse_size

VERSION = "# thpcore-trace 1"
ADVICE = {name[5:].lower(): getattr(constants, name) for name in dir(constants)
          if name.startswith("MADV_") and not name.startswith("MADV_F_")}
ADVICE_NAME = {v: k for k, v in ADVICE.items()}
OPS = {"spawn": (1, 2), "mmap": (2, 2), "munmap": (2, 2), "mremap": (3, 5), "madvise": (3, 3),
       "write": (2, 2),
       "read": (2, 2), "fork": (1, 1), "exit": (0, 0), "sleep": (1, 1)}


def format_time(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def parse_time(text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"bad time {text!r}") from None
    if value < 0 or not value.is_finite():
        raise ValueError(f"bad time {text!r}")
    return int(value * 1_000_000_000)


# ---- writing -----------------------------------------------------------------------------------

class TraceWriter:
    """Writes records; `wrap(process, label)` returns a stand-in for the process that records
    every memory operation made through it (and wraps forked children the same way)."""

    def __init__(self, stream: TextIO, machine, header: dict[str, Any] | None = None):
        self.f, self.m = stream, machine
        self.f.write(VERSION + "\n")
        for key, value in (header or {}).items():
            if key == "machine":
                self.f.write("# machine " + " ".join(f"{k}={v}" for k, v in value.items()) + "\n")
            elif key == "sysfs":
                for path, v in value.items():
                    self.f.write(f"# sysfs {path} {v}\n")
            elif key == "fragment" and value:
                self.f.write(f"# fragment {value.get('fraction', 0.0)} "
                             f"{value.get('pattern', 'scattered')}\n")
            elif key == "cgroups":
                for path in value:
                    self.f.write(f"# cgroup {path}\n")
        self.labels: dict[int, str] = {}

    def record(self, label: str, op: str, *args) -> None:
        self.f.write(" ".join([format_time(self.m.clock_ns), label, op, *map(str, args)]) + "\n")

    def spawn(self, name: str, cgroup: str = ""):
        p = self.m.spawn(name=name, cgroup=cgroup)
        label = str(p.pid)
        self.record(label, "spawn", name, *([cgroup] if cgroup else []))
        return RecordedProcess(self, p, label)

    def sleep(self, seconds: float) -> None:
        """Record that `seconds` pass (the caller runs the machine for them, as m.run does)."""
        self.record("-", "sleep", format_time(int(seconds * 1e9)))


class RecordedProcess:
    """A Process whose memory operations are written to a trace before they run."""

    def __init__(self, writer: TraceWriter, proc, label: str):
        self._w, self._p, self._label = writer, proc, label

    def __getattr__(self, name):
        return getattr(self._p, name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._p, name, value)

    def mmap(self, length, *args, **kwargs):
        addr = self._p.mmap(length, *args, **kwargs)
        self._w.record(self._label, "mmap", hex(addr), length)
        return addr

    def munmap(self, addr, length):
        self._w.record(self._label, "munmap", hex(addr), length)
        return self._p.munmap(addr, length)

    def mremap(self, addr, old_len, new_len, flags=0, new_address=0):
        self._w.record(self._label, "mremap", hex(addr), old_len, new_len, flags, hex(new_address))
        return self._p.mremap(addr, old_len, new_len, flags, new_address)

    def madvise(self, addr, length, advice):
        self._w.record(self._label, "madvise", hex(addr), length, ADVICE_NAME.get(advice, advice))
        return self._p.madvise(addr, length, advice)

    def write(self, addr, length, value=None):
        self._w.record(self._label, "write", hex(addr), length)
        return self._p.write(addr, length, value)

    def read(self, addr, length):
        self._w.record(self._label, "read", hex(addr), length)
        return self._p.read(addr, length)

    def fork(self):
        child = self._p.fork()
        label = str(child.pid)
        self._w.record(self._label, "fork", label)
        return RecordedProcess(self._w, child, label)

    def exit(self):
        self._w.record(self._label, "exit")
        return self._p.exit()


# ---- reading -----------------------------------------------------------------------------------

@dataclass
class Record:
    line: int
    time_ns: int
    pid: str
    op: str
    args: list                         # parsed: ints for ADDR/LEN/ADVICE/SECONDS (ns), str else


@dataclass
class Trace:
    machine: dict[str, Any] = field(default_factory=dict)
    sysfs: dict[str, str] = field(default_factory=dict)
    fragment: tuple[float, str] | None = None
    cgroups: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)


def _number(text: str, line: int) -> int:
    try:
        return parse_size(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"line {line}: {exc}") from None


def parse_trace(text: str) -> Trace:
    tr = Trace()
    lines = text.splitlines()
    if not lines or lines[0].strip() != VERSION:
        raise ValueError(f"not a thpcore trace: the first line must be {VERSION!r}")
    last = 0
    for n, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if line.startswith("#"):
            words = line[1:].split()
            if not words:
                continue
            key, rest = words[0], words[1:]
            if key == "machine":
                for kv in rest:
                    k, _, v = kv.partition("=")
                    tr.machine[k] = int(v) if v.isdigit() else v
            elif key == "sysfs" and len(rest) == 2:
                tr.sysfs[rest[0]] = rest[1]
            elif key == "fragment" and len(rest) == 2:
                tr.fragment = (float(rest[0]), rest[1])
            elif key == "cgroup" and len(rest) == 1:
                tr.cgroups.append(rest[0])
            continue                              # any other comment
        if not line:
            continue
        words = line.split()
        if len(words) < 3:
            raise ValueError(f"line {n}: expected 'TIME PID OP ARGS...', got {raw!r}")
        t, pid, op, args = words[0], words[1], words[2], words[3:]
        if op not in OPS:
            raise ValueError(f"line {n}: unknown operation {op!r}; one of {sorted(OPS)}")
        lo, hi = OPS[op]
        if not lo <= len(args) <= hi:
            raise ValueError(f"line {n}: {op} takes {lo}..{hi} arguments, got {len(args)}")
        try:
            ns = parse_time(t)
        except ValueError as exc:
            raise ValueError(f"line {n}: {exc}") from None
        if ns < last:
            raise ValueError(f"line {n}: time goes backwards ({t})")
        last = ns
        if op in ("mmap", "munmap", "madvise", "write", "read"):
            parsed: list = [_number(args[0], n), _number(args[1], n)]
            if op == "madvise":
                if args[2] in ADVICE:
                    parsed.append(ADVICE[args[2]])
                elif args[2].isdigit():
                    parsed.append(int(args[2]))
                else:
                    raise ValueError(f"line {n}: unknown advice {args[2]!r}")
        elif op == "mremap":
            parsed = [_number(x, n) for x in args] + [0] * (5 - len(args))
        elif op == "sleep":
            try:
                parsed = [parse_time(args[0])]
            except ValueError as exc:
                raise ValueError(f"line {n}: {exc}") from None
        else:
            parsed = args
        tr.records.append(Record(n, ns, pid, op, parsed))
    return tr


@dataclass
class ReplayResult:
    machine: Any
    processes: dict[str, Any]
    ops: int
    errors: Counter                               # (op, errno name) -> count


def replay(trace: Trace | str | Path, **machine_overrides) -> ReplayResult:
    """Run a trace on a new Machine (header arguments, then the overrides)."""
    if not isinstance(trace, Trace):
        trace = parse_trace(Path(trace).read_text())
    m = Machine(**{**trace.machine, **machine_overrides})
    for path, value in trace.sysfs.items():
        m.sysfs.write(path, value)
    for path in trace.cgroups:
        m.cgroups.create(path)
    if trace.fragment:
        fragment(m, *trace.fragment)
    procs: dict[str, Any] = {}
    errors: Counter = Counter()
    for r in trace.records:
        if r.time_ns > m.clock_ns:
            m.run_until(r.time_ns)
        if r.op == "sleep":
            m.run_until(m.clock_ns + r.args[0])
            continue
        if r.op == "spawn":
            if r.pid in procs and procs[r.pid].alive:
                raise ValueError(f"line {r.line}: process {r.pid} already exists")
            procs[r.pid] = m.spawn(name=r.args[0], cgroup=r.args[1] if len(r.args) > 1 else "")
            continue
        p = procs.get(r.pid)
        if p is None:
            raise ValueError(f"line {r.line}: no process {r.pid!r} (spawn or fork it first)")
        try:
            _apply(p, r, procs)
        except OSError as exc:
            errors[(r.op, errno_mod.errorcode.get(exc.errno, str(exc.errno)))] += 1
    return ReplayResult(m, procs, len(trace.records), errors)


def _apply(p, r: Record, procs: dict) -> None:
    a = r.args
    if r.op == "mmap":
        p.mmap(a[1], flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, addr=a[0])
    elif r.op == "munmap":
        p.munmap(a[0], a[1])
    elif r.op == "mremap":
        p.mremap(*a)
    elif r.op == "madvise":
        p.madvise(a[0], a[1], a[2])
    elif r.op == "write":
        p.write(a[0], a[1])
    elif r.op == "read":
        p.read(a[0], a[1])
    elif r.op == "fork":
        procs[a[0]] = p.fork()
    elif r.op == "exit":
        p.exit()


def main(path: str, memory: str | None = None, seed: int | None = None) -> int:
    overrides = {k: v for k, v in (("memory", memory), ("seed", seed)) if v is not None}
    res = replay(path, **overrides)
    m = res.machine
    print(f"replayed {res.ops} records to t={m.clock_ns / 1e9:.3f} s on a "
          f"{m.nr_pages * 4096 >> 20} MiB machine")
    print(f"{'pid':>8} {'name':<16} {'alive':>5} {'Rss_MiB':>9} {'AnonHuge_MiB':>12}")
    for label, p in res.processes.items():
        rollup = p.smaps_rollup() if p.alive else {}
        print(f"{label:>8} {p.name:<16} {str(p.alive):>5} {rollup.get('Rss', 0) // 1024:>9} "
              f"{rollup.get('AnonHugePages', 0) // 1024:>12}")
    for key in ("thp_fault_alloc", "thp_fault_fallback", "thp_collapse_alloc", "thp_split_pmd",
                "compact_stall"):
        print(f"{key} {m.vmstat[key]}")
    for (op, err), count in sorted(res.errors.items()):
        print(f"errors: {op} {err} x{count}")
    m.check()
    return 0
