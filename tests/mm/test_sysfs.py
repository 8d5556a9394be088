"""THP sysfs knobs: paths, texts, parsing and errno, as the live 6.18 kernel showed them
(tests/live/test_live.py re-checks the same table against the running kernel)."""

import errno

import pytest

import thpcore
from thpcore.mm.sysfs import THP_ROOT

from conftest import unchanged
from cases import WRITE_CASES

K = THP_ROOT + "/khugepaged"

# (path relative to THP_ROOT, written bytes, expected: text read back, or an errno name)


@pytest.mark.parametrize("rel, data, expect", WRITE_CASES)
def test_write_matches_kernel(rel, data, expect):
    m = thpcore.Machine("1G")
    path = f"{THP_ROOT}/{rel}"
    if expect.isupper():
        before = m.sysfs.read(path)
        err = unchanged(m, lambda: m.sysfs.write(path, data), OSError)
        assert errno.errorcode[err.errno] == expect
        assert err.filename == path
        assert m.sysfs.read(path) == before
    else:
        assert m.sysfs.write(path, data) == min(len(data.encode()), 4096)
        assert m.sysfs.read(path) == expect


def test_default_texts():
    m = thpcore.Machine("1G")
    expected = {
        "enabled": "always [madvise] never\n",
        "defrag": "always defer defer+madvise [madvise] never\n",
        "use_zero_page": "1\n", "shrink_underused": "1\n", "hpage_pmd_size": "2097152\n",
        "shmem_enabled": "always within_size advise [never] deny force\n",
        "khugepaged/defrag": "1\n", "khugepaged/max_ptes_none": "511\n",
        "khugepaged/max_ptes_swap": "64\n", "khugepaged/max_ptes_shared": "256\n",
        "khugepaged/pages_to_scan": "4096\n", "khugepaged/scan_sleep_millisecs": "10000\n",
        "khugepaged/alloc_sleep_millisecs": "60000\n", "khugepaged/full_scans": "0\n",
        "khugepaged/pages_collapsed": "0\n",
        "hugepages-2048kB/enabled": "always [inherit] madvise never\n",
        "hugepages-2048kB/shmem_enabled": "always [inherit] within_size advise never\n",
        "hugepages-2048kB/stats/anon_fault_alloc": "0\n",
        "hugepages-64kB/enabled": "always inherit madvise [never]\n",
        "hugepages-64kB/shmem_enabled": "always inherit within_size advise [never]\n",
        "hugepages-8kB/shmem_enabled": "always inherit within_size advise [never]\n",
        "hugepages-512kB/stats/nr_anon": "0\n",
    }
    for rel, text in expected.items():
        assert m.sysfs.read(f"{THP_ROOT}/{rel}") == text, rel


def test_boot_mode_parameter():
    assert thpcore.Machine("1G", transparent_hugepage="always").thp.enabled == "always"


def test_empty_write_returns_zero_and_changes_nothing():
    m = thpcore.Machine("1G")
    before = m.state_hash()
    assert m.sysfs.write(f"{THP_ROOT}/enabled", "") == 0
    assert m.sysfs.write(f"{K}/max_ptes_none", b"") == 0
    assert m.state_hash() == before


def test_bytes_and_str_count_bytes():
    m = thpcore.Machine("1G")
    assert m.sysfs.write(f"{THP_ROOT}/enabled", b"never\n") == 6
    assert m.sysfs.write(f"{THP_ROOT}/enabled", "always") == 6
    with pytest.raises(OSError) as info:
        m.sysfs.write(f"{THP_ROOT}/enabled", "nevér")
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("rel", ["khugepaged/full_scans", "khugepaged/pages_collapsed",
                                 "hpage_pmd_size", "hugepages-2048kB/stats/nr_anon"])
def test_read_only_files_refuse_writes_with_eacces(rel):
    m = thpcore.Machine("1G")
    err = unchanged(m, lambda: m.sysfs.write(f"{THP_ROOT}/{rel}", "1"), OSError)
    assert err.errno == errno.EACCES


def test_missing_paths_and_directories():
    m = thpcore.Machine("1G")
    for path in (f"{THP_ROOT}/nonexistent_knob", f"{K}/nonexistent", "/sys/kernel/mm/foo",
                 f"{THP_ROOT}/hugepages-8kB/enabled", f"{THP_ROOT}/anon_beside_full"):
        assert unchanged(m, lambda: m.sysfs.write(path, "1"), OSError).errno == errno.ENOENT
        assert unchanged(m, lambda: m.sysfs.read(path), OSError).errno == errno.ENOENT
    assert unchanged(m, lambda: m.sysfs.write(K, "1"), OSError).errno == errno.EISDIR
    assert unchanged(m, lambda: m.sysfs.read(K), OSError).errno == errno.EISDIR
    assert "max_ptes_none" in m.sysfs.listdir(K)
    assert "stats" in m.sysfs.listdir(THP_ROOT + "/hugepages-2048kB")
    assert m.sysfs.read(THP_ROOT + "//khugepaged/../enabled") == "always [madvise] never\n"


def test_bad_types():
    m = thpcore.Machine("1G")
    unchanged(m, lambda: m.sysfs.write(f"{THP_ROOT}/enabled", 1), TypeError)
    unchanged(m, lambda: m.sysfs.read(None), TypeError)


def test_typed_view():
    m = thpcore.Machine("1G")
    m.thp.enabled = "always"
    m.thp.khugepaged.max_ptes_none = 256
    m.thp.use_zero_page = False
    m.thp.shrink_underused = 0
    assert m.sysfs.read(f"{THP_ROOT}/enabled") == "[always] madvise never\n"
    assert m.sysfs.read(f"{K}/max_ptes_none") == "256\n"
    assert m.sysfs.read(f"{THP_ROOT}/use_zero_page") == "0\n"
    m.thp.hugepages_2048kB.enabled = "never"
    assert not m.khugepaged_running
    assert m.thp.khugepaged.max_ptes_none == 256


@pytest.mark.parametrize("attr, value, exc", [
    ("enabled", "sometimes", OSError), ("enabled", 1, TypeError),
    ("defrag", None, TypeError), ("use_zero_page", 2, OSError), ("use_zero_page", "1", TypeError),
])
def test_typed_view_rejects(attr, value, exc):
    m = thpcore.Machine("1G")
    unchanged(m, lambda: setattr(m.thp, attr, value), exc)


@pytest.mark.parametrize("attr, value, exc", [
    ("max_ptes_none", 512, OSError), ("max_ptes_none", -1, OSError), ("max_ptes_none", True, TypeError),
    ("max_ptes_none", 1.0, TypeError), ("pages_to_scan", 0, OSError), ("full_scans", 3, AttributeError),
    ("no_such_knob", 1, AttributeError),
])
def test_typed_khugepaged_rejects(attr, value, exc):
    m = thpcore.Machine("1G")
    unchanged(m, lambda: setattr(m.thp.khugepaged, attr, value), exc)


def test_sysctl_vm_knobs():
    m = thpcore.Machine("1G")
    read, write = m.procfs.read, m.procfs.write
    assert read("/proc/sys/vm/watermark_scale_factor") == "10\n"
    assert read("/proc/sys/vm/watermark_boost_factor") == "15000\n"
    assert read("/proc/sys/vm/extfrag_threshold") == "500\n"
    assert read("/proc/sys/vm/compaction_proactiveness") == "20\n"
    assert write("/proc/sys/vm/watermark_scale_factor", "100\n") == 4
    # delta = max(min/4, 262144 * 100 / 10000 = 2621)
    wmin = m.page_alloc.zone.watermarks()[0]
    assert m.page_alloc.zone.watermarks() == (wmin, wmin + 2621, wmin + 2 * 2621)
    assert write("/proc/sys/vm/extfrag_threshold", " 0x10 ") == 6
    assert read("/proc/sys/vm/extfrag_threshold") == "16\n"
    for path, bad in [("watermark_scale_factor", "0"), ("watermark_scale_factor", "3001"),
                      ("extfrag_threshold", "1001"), ("compaction_proactiveness", "-1"),
                      ("min_free_kbytes", "-5"), ("min_free_kbytes", "12abc")]:
        err = unchanged(m, lambda: write(f"/proc/sys/vm/{path}", bad), OSError)
        assert err.errno == errno.EINVAL
    assert unchanged(m, lambda: write("/proc/buddyinfo", "1"), OSError).errno == errno.EACCES
    assert unchanged(m, lambda: read("/proc/nonexistent"), OSError).errno == errno.ENOENT


def test_every_folio_size_has_the_kernels_directory_layout():
    m = thpcore.Machine("1G")
    sizes = [d for d in m.sysfs.listdir(THP_ROOT) if d.startswith("hugepages-")]
    assert sorted(sizes, key=lambda d: int(d[10:-2])) == [
        f"hugepages-{kb}kB" for kb in (8, 16, 32, 64, 128, 256, 512, 1024, 2048)]
    assert m.sysfs.listdir(f"{THP_ROOT}/hugepages-8kB") == ["shmem_enabled", "stats"]
    assert "anon_fault_alloc" not in m.sysfs.listdir(f"{THP_ROOT}/hugepages-8kB/stats")
    assert len(m.sysfs.listdir(f"{THP_ROOT}/hugepages-64kB/stats")) == 18
    assert unchanged(m, lambda: m.sysfs.write(f"{THP_ROOT}/hugepages-64kB/stats/nr_anon", "1"),
                     OSError).errno == errno.EACCES
