import os

import pytest

from thpcore import _engine


def test_engine_flavour_is_the_one_ci_built():
    expect = os.environ.get("THPCORE_EXPECT_DEBUG")
    if expect is None:
        pytest.skip("THPCORE_EXPECT_DEBUG not set (CI sets it for the debug run)")
    assert _engine.DEBUG is (expect == "1")


def test_frame_table_is_twelve_bytes_a_frame():
    z = _engine.Zone(512 * 8)
    frames = z.frames()
    per_frame = sum(a.itemsize for name, a in frames.items() if name != "pageblock_mt")
    assert per_frame == 12
    # plus the lazyfree bitmap: one bit a frame
    assert z.nbytes == 12 * z.nr_pages + z.nr_pages // 8 + z.nr_pageblocks
    assert z.lazyfree_bits().nbytes == z.nr_pages // 8


def test_frame_views_are_read_only():
    z = _engine.Zone(512)
    with pytest.raises(ValueError):
        z.frames()["flags"][0] = 0


@pytest.mark.parametrize("n", [0, -512, 100, 513])
def test_zone_rejects_bad_sizes(n):
    with pytest.raises(ValueError):
        _engine.Zone(n)
