"""thpcore: a fast, faithful simulator of Linux transparent hugepages for anonymous memory."""

from . import constants
from .constants import *  # noqa: F401,F403  (MADV_*, PROT_*, MAP_*, PR_*: Linux's values)
from .machine import InvariantError, Machine
from .procfs import parse_buddyinfo, parse_pagetypeinfo
from .units import parse_size
from .vmstat import parse_vmstat

__version__ = "0.1.0"

__all__ = ["Machine", "InvariantError", "parse_size", "parse_buddyinfo", "parse_pagetypeinfo",
           "parse_vmstat", "constants"] + [n for n in dir(constants) if n.isupper()]
from .madvise import Unsupported
from .memory import OOMKilled, OutOfMemory
from .process import Process, SegmentationFault

__all__ += ["Process", "SegmentationFault", "OutOfMemory", "OOMKilled", "Unsupported"]
