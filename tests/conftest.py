import os

import pytest

import thpcore
from thpcore import _engine


def pytest_report_header(config):
    return f"thpcore engine: {'debug (bounds checks on)' if _engine.DEBUG else 'release'}"


@pytest.fixture
def machine():
    return thpcore.Machine(memory="64M", seed=0)


@pytest.fixture
def small():
    """16 MiB: 4096 frames, 8 pageblocks, 4 order-10 blocks; THP off at boot (< 512 MiB)."""
    return thpcore.Machine(memory="16M", seed=0)


def unchanged(m, fn, exc):
    """Call fn, expect exc, and prove the machine is exactly as before and still consistent."""
    before = m.state_hash()
    with pytest.raises(exc) as info:
        fn()
    assert m.state_hash() == before
    m.check()
    return info.value


EXPECT_DEBUG = os.environ.get("THPCORE_EXPECT_DEBUG")
