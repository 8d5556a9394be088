"""/proc/vmstat: the counters thpcore models, in the kernel's names and order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from importlib import resources


def _kernel_order() -> tuple[str, ...]:
    text = resources.files("thpcore").joinpath("data/vmstat_names.txt").read_text()
    return tuple(line.strip() for line in text.splitlines()
                 if line.strip() and not line.startswith("#"))


VMSTAT_NAMES = _kernel_order()


class Vmstat(Mapping[str, int]):
    """Read-only mapping name -> value over the counters the simulator models.

    Event counters (pgfree, thp_*) live in `events`; state counters (nr_free_pages, ...) are
    computed on demand by `sources`. Unmodelled kernel counters are absent (KeyError), so a
    reader never mistakes "not simulated" for zero.
    """

    def __init__(self, events: dict[str, int], sources: dict[str, Callable[[], int]]):
        unknown = (set(events) | set(sources)) - set(VMSTAT_NAMES)
        if unknown:
            raise ValueError(f"not kernel vmstat names: {sorted(unknown)}")
        self._events = events
        self._sources = sources

    def __getitem__(self, name: str) -> int:
        if name in self._sources:
            return int(self._sources[name]())
        return int(self._events[name])

    def __iter__(self) -> Iterator[str]:
        return (n for n in VMSTAT_NAMES if n in self._sources or n in self._events)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def render(self) -> str:
        """The /proc/vmstat text: 'name value' lines in kernel order."""
        return "".join(f"{name} {self[name]}\n" for name in self)


def parse_vmstat(text: str) -> dict[str, int]:
    """Parse /proc/vmstat text (live or simulated)."""
    out = {}
    for line in text.splitlines():
        if line.strip():
            name, value = line.split()
            out[name] = int(value)
    return out
