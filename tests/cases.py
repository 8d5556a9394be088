"""Test data shared by the simulator's tests and their live or CLI counterparts."""

# A small scenario file: quick enough for every CLI, sweep and trace test.
SMALL = """
[scenario]
name = "small"
[machine]
memory = "1G"
seed = 3
[fragment]
fraction = 0.0005
[[process]]
name = "svc"
count = 3
workload = "churn"
size = "64M"
populate = 0.5
hugepage = "after"
params = { collapse_every = 0 }
[[process]]
name = "db"
priority = 10
workload = "zipf"
size = "64M"
populate = 0.75
hugepage = "after"
[run]
duration = 120
interval = 20
variants = ["khugepaged", "tuned", "uhugepaged"]
[variant.tuned]
khugepaged = { pages_to_scan = 32768, scan_sleep_millisecs = 1000 }
[variant.uhugepaged]
policy = "priority"
budget = 2
hugepage = false
"""


# sysfs writes and what the knob reads back afterwards (the kernel's parse rules), checked
# on the simulator (tests/mm/test_sysfs.py) and on the live kernel (tests/live/test_live.py).
WRITE_CASES = [
    ("enabled", "always", "[always] madvise never\n"),
    ("enabled", "never\n", "always madvise [never]\n"),
    ("enabled", "madvise\0junk", "always [madvise] never\n"),
    ("enabled", " always", "EINVAL"), ("enabled", "always ", "EINVAL"),
    ("enabled", "Always", "EINVAL"), ("enabled", "[madvise]", "EINVAL"),
    ("enabled", "mad", "EINVAL"), ("enabled", "always madvise", "EINVAL"),
    ("enabled", "never\r\n", "EINVAL"), ("enabled", "\n", "EINVAL"), ("enabled", "always\n\n", "EINVAL"),
    ("enabled", "inherit", "EINVAL"), ("enabled", "defer", "EINVAL"),
    ("defrag", "defer+madvise", "always defer [defer+madvise] madvise never\n"),
    ("defrag", "defer", "always [defer] defer+madvise madvise never\n"),
    ("defrag", "inherit", "EINVAL"),
    ("hugepages-2048kB/enabled", "inherit", "always [inherit] madvise never\n"),
    ("hugepages-2048kB/enabled", "madvise", "always inherit [madvise] never\n"),
    ("hugepages-2048kB/enabled", "defer", "EINVAL"),
    ("shmem_enabled", "force", "always within_size advise never deny [force]\n"),
    ("shmem_enabled", "madvise", "EINVAL"),
    ("hugepages-2048kB/shmem_enabled", "within_size", "always inherit [within_size] advise never\n"),
    ("hugepages-2048kB/shmem_enabled", "deny", "EINVAL"),
    # mTHP sizes: the same words, never by default
    ("hugepages-64kB/enabled", "always", "[always] inherit madvise never\n"),
    ("hugepages-16kB/enabled", "inherit\n", "always [inherit] madvise never\n"),
    ("hugepages-1024kB/enabled", "madvise", "always inherit [madvise] never\n"),
    ("hugepages-32kB/enabled", "defer", "EINVAL"),
    ("hugepages-8kB/shmem_enabled", "advise", "always inherit within_size [advise] never\n"),
    # kstrtouint family: every failure is EINVAL
    ("khugepaged/max_ptes_none", "0", "0\n"), ("khugepaged/max_ptes_none", "511", "511\n"),
    ("khugepaged/max_ptes_none", "512", "EINVAL"), ("khugepaged/max_ptes_none", "-1", "EINVAL"),
    ("khugepaged/max_ptes_none", "010", "10\n"), ("khugepaged/max_ptes_none", "+5", "5\n"),
    ("khugepaged/max_ptes_none", "5\n", "5\n"), ("khugepaged/max_ptes_none", "5\0", "5\n"),
    ("khugepaged/max_ptes_none", " 5", "EINVAL"), ("khugepaged/max_ptes_none", "5 ", "EINVAL"),
    ("khugepaged/max_ptes_none", "0x10", "EINVAL"), ("khugepaged/max_ptes_none", "abc", "EINVAL"),
    ("khugepaged/max_ptes_none", "1.5", "EINVAL"), ("khugepaged/max_ptes_none", "5\n\n", "EINVAL"),
    ("khugepaged/max_ptes_none", "0" * 30 + "5", "5\n"),
    ("khugepaged/max_ptes_swap", "512", "EINVAL"), ("khugepaged/max_ptes_shared", "511", "511\n"),
    ("khugepaged/pages_to_scan", "0", "EINVAL"), ("khugepaged/pages_to_scan", "512", "512\n"),
    ("khugepaged/pages_to_scan", "4294967295", "4294967295\n"),
    ("khugepaged/pages_to_scan", "4294967296", "EINVAL"),
    ("khugepaged/scan_sleep_millisecs", "0", "0\n"),
    ("khugepaged/alloc_sleep_millisecs", "18446744073709551616", "EINVAL"),
    ("khugepaged/alloc_sleep_millisecs", "9" * 40, "EINVAL"),
    # single_hugepage_flag_store: kstrtoul (ERANGE on overflow), then 0/1
    ("use_zero_page", "0", "0\n"), ("use_zero_page", "+1", "1\n"), ("use_zero_page", "01", "1\n"),
    ("use_zero_page", "2", "EINVAL"), ("use_zero_page", "-0", "EINVAL"),
    ("use_zero_page", "0x1", "EINVAL"), ("use_zero_page", "1 ", "EINVAL"),
    ("use_zero_page", "18446744073709551615", "EINVAL"),
    ("use_zero_page", "18446744073709551616", "ERANGE"), ("use_zero_page", "9" * 40, "ERANGE"),
    ("khugepaged/defrag", "0\n", "0\n"), ("khugepaged/defrag", "yes", "EINVAL"),
    # kstrtobool
    ("shrink_underused", "0", "0\n"), ("shrink_underused", "y", "1\n"), ("shrink_underused", "N", "0\n"),
    ("shrink_underused", "on", "1\n"), ("shrink_underused", "oF", "0\n"), ("shrink_underused", "o", "EINVAL"),
    ("shrink_underused", "010", "0\n"), ("shrink_underused", "10", "1\n"), ("shrink_underused", "0x1", "0\n"),
    ("shrink_underused", "1abc", "1\n"), ("shrink_underused", "+1", "EINVAL"), ("shrink_underused", "2", "EINVAL"),
    ("shrink_underused", " 1", "EINVAL"), ("shrink_underused", "9" * 40, "EINVAL"),
    # kernfs cuts writes at 4096 bytes
    ("khugepaged/max_ptes_none", "0" * 5000 + "7", "0\n"),
    ("khugepaged/max_ptes_none", "1" + "0" * 5000, "EINVAL"),
    ("use_zero_page", "1" + "0" * 5000, "ERANGE"),
]
