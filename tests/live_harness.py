"""The tests' name for thpcore.live (the ctypes live-kernel backend)."""
from thpcore.live import *  # noqa: F401,F403
from thpcore.live import knob_lock, read_knob  # noqa: F401
