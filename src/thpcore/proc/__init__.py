"""procfs text views of the kernel model (read-only but for /proc/sys writes)."""
