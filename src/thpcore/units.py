"""Sizes written the way the kernel's memparse() reads them ("512M", "64G", "1T", 4096)."""

from __future__ import annotations

import re

from thpcore.constants import PAGE_SHIFT, PAGE_SIZE  # noqa: F401  (units.PAGE_SIZE is used widely)

_SUFFIX = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_SIZE_RE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\s*([KMGTPEkmgtpe]?)(?:i?B)?\s*")


def parse_c_integer(digits: str) -> int:
    """An unsigned integer as C's strtoul(s, NULL, 0) reads it: 0x.. hex, 0.. octal, else decimal."""
    if digits[:2].lower() == "0x":
        return int(digits, 16)
    if len(digits) > 1 and digits[0] == "0":
        return int(digits, 8)
    return int(digits, 10)


def parse_size(value: int | str, *, what: str = "size") -> int:
    """Bytes from an int or a memparse-style string; raises TypeError/ValueError on bad input."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be an int or a string like '4G', not {type(value).__name__}")
    if isinstance(value, int):
        nbytes = value
    else:
        m = _SIZE_RE.fullmatch(value)
        if not m:
            raise ValueError(f"{what}: cannot parse {value!r} (expected e.g. '512M', '64G', '1T')")
        digits, suffix = m.groups()
        nbytes = parse_c_integer(digits) << _SUFFIX[suffix.upper()]
    if nbytes < 0:
        raise ValueError(f"{what} must not be negative")
    return nbytes


def format_size(nbytes: int) -> str:
    """The largest exact binary unit: 4294967296 -> '4G'."""
    for suffix, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if nbytes and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{suffix}"
    return str(nbytes)
