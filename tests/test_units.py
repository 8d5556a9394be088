import pytest

from thpcore import parse_size
from thpcore.units import format_size


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("4K", 4096), ("4k", 4096), ("512M", 512 << 20), ("64G", 64 << 30),
    ("1T", 1 << 40), ("0x1000", 4096), ("2GiB", 2 << 30), (" 8M ", 8 << 20), ("010", 8),
    (12345, 12345),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "M", "4X", "-1G", "1.5G", "4 G B", "0x"])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize("bad", [1.5, None, [4096], True])
def test_parse_size_type_errors(bad):
    with pytest.raises(TypeError):
        parse_size(bad)


def test_parse_size_negative_int():
    with pytest.raises(ValueError):
        parse_size(-4096)


def test_format_size():
    assert format_size(4 << 30) == "4G"
    assert format_size(3 << 20) == "3M"
    assert format_size(4097) == "4097"
