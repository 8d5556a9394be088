"""uhugepaged: the userspace hugepage daemon and its policies."""
