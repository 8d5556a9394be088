"""thpcore: a fast, faithful simulator of Linux transparent hugepages for anonymous memory."""

from thpcore import constants
from thpcore.constants import *  # noqa: F401,F403  (MADV_*, PROT_*, MAP_*, PR_*: Linux's values)
from thpcore.errors import InvariantError, OOMKilled, OutOfMemory, SegmentationFault, Unsupported
from thpcore.machine import Machine
from thpcore.mm.vmstat import parse_vmstat
from thpcore.proc.procfs import parse_buddyinfo, parse_pagetypeinfo
from thpcore.units import parse_size

__version__ = "0.1.0"

__all__ = ["Machine", "InvariantError", "parse_size", "parse_buddyinfo", "parse_pagetypeinfo",
           "parse_vmstat", "constants"] + [n for n in dir(constants) if n.isupper()]
from thpcore.process import Process

__all__ += ["Process", "SegmentationFault", "OutOfMemory", "OOMKilled", "Unsupported"]
