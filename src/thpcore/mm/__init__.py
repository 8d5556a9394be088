"""The kernel model: one module per mm/ subsystem, named as in the kernel."""
