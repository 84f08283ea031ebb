"""Debugging a failed task: its frames where it ran (``worker_snapshot``), pdb on them in the kernel
(``kernel_debugger``), and running its failed attempt again in the kernel (``kernel_failure``).

Nothing here is imported until a task fails.
"""
